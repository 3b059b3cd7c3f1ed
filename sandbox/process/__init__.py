"""The sandbox process: its tie to the gateway that started it, and its log lines."""
