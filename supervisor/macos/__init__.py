"""macOS backend: the Seatbelt profile compiler, the sandbox_init runner and the denial log monitor."""
