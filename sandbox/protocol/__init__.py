"""What crosses the trust boundary: the messages between gateway and sandbox, and their encoding."""
