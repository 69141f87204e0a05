"""The agent's sync with the controller: one pure session, two transports, one reconnect loop.

* session.py: the ACK/NACK/resync rules, without I/O;
* websocket.py, polling.py: the two transports that drive it; channel.py what they share;
* client.py: the reconnect loop that picks a transport (``AgentSync``);
* policy_sources.py: the controller's policies and the local files, and their clashes;
* state_file.py: the agent's id and last applied state on disk;
* controlled_agent.py: an agent server driven by a controller (``SyncedAgent``);
* config.py, errors.py: the settings and the error split.
"""
