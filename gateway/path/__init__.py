"""The governed path every product request walks, and what keeps it whole: the settler, the sandbox's supervisor."""
