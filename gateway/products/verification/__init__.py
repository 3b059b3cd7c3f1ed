"""The verification product: yes/no templates, check caps, Merkle-tree receipts."""
