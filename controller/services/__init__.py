"""Services: one per use case, each owning the transaction that writes its change."""
