"""The operator's side of dnsmesh: the ``dnsmesh`` command, its REST client and ``dnsmesh up``.

It drives the agent and the controller; neither of them, nor the core ``dnsmesh`` package,
imports it.
"""
