"""The local stack: the embedded broker and service processes that ``mlbus up`` runs."""
