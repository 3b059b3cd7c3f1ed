"""Identity: who is calling, from the verified client certificate; development certificates."""
