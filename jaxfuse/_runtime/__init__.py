"""Process and machine state: the persistent compilation cache and the store of whole executables."""
