"""Linux backend: Landlock baseline and the sandbox spawner."""
