"""nono-shell: the drop-in shell front. Imports only the standard library: every command pays its start-up."""
