"""The operator's side of dnsmesh: the ``dnsmesh`` command, its REST client and ``dnsmesh up``.

It drives the agent and the controller; neither of them, nor the core ``dnsmesh`` package,
imports it.
"""

import sys

# httpx's package imports its own command line (httpx._main: click, rich and pygments) when
# those happen to be installed, as uvicorn's click always is beside the controller: 35-50 ms
# and 5-6 MiB in every dnsmesh process that talks HTTP, the agent on every node included,
# for a CLI nothing here runs. A None in sys.modules makes that import fail as if they were
# missing, which httpx handles (its ``main`` then says so). setdefault: leave an httpx
# already imported alone.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
