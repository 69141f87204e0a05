"""Endpoint probing: one probe task per endpoint address, feeding dnsmesh.health."""
