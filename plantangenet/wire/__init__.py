"""The wire: the protocol over NATS, the service that speaks it, the bots' client.

Holds the subjects, the messages and their codes (``protocol``), the session service
(``service``, with ``ownership`` of partitions across processes, its ``metrics`` and NATS
``micro`` endpoints), the bot client (``client``) and the nats-server accounts of a deployment
(``access``).
May import the runtime and everything below it; not timetravel or cli.
"""
