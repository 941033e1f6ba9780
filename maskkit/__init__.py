"""maskkit."""
