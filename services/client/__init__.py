"""The users' side of ``skybus``: commands that speak only REST to a gateway (``skybus login``, ``run``, ...).

Nothing here imports the gateway, a manager or a store (an import contract keeps it so): the client
works against any gateway it can reach, as a user's laptop does.
"""
