"""dnsmesh: the shared core of the DNS service mesh, free of network I/O."""
