"""``dnsmesh node``: install the agent as a node's resolver (and undo it), capture port 53.

The text written is computed by the pure core (dnsmesh/noderesolv.py, dnsmesh/stubbudget.py,
dnsmesh/nftcapture.py); this package reads and writes the node's files and runs nft and
systemctl. ``units`` links to deploy/systemd, the unit files it installs.
"""
