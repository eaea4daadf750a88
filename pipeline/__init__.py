"""The propagation pipeline: outbox rows -> relay -> Kafka -> worker -> outcomes -> projector.

The folders are the architecture. Data and imports flow one way, top to bottom; the contracts in
``.importlinter`` (run by ``make lint``) keep it so.

==============  ===========================================================================
layer           holds
==============  ===========================================================================
``ops``         what an operator runs: the ``pipeline`` CLI (``cli``; ``options`` and
                ``output`` shared by every command), ``status`` (and ``retry``), ``lag``,
                ``history`` (``show``), ``tail``, ``replay``, the web ``console``
``devtools``    what a developer runs: the local ``stack`` (Kafka, Postgres), the
                ``fake_provisioner``, ``bench``, ``demo`` and the ``workload`` chaos shares
``components``  the long-running roles: ``relay``, ``worker`` (the faust app, its
                ``ack_guard``, ``sequencer`` and ``lanes``), ``projector``,
                the ``lag`` monitor, and the ``supervisor`` that wires config into them and
                runs them (the composition root, with the one ``COMPONENTS`` table)
``adapters``    drivers other than Postgres: the gRPC ``provisioner`` client and ``proto``,
                Kafka producer, topics, replication, ``faust_compat``
``store``       every SQL statement and every psycopg call, one module per table family,
                ``migrations`` and ``migrate``, least-privilege ``roles``; ``db`` translates
                driver errors once, ``rowstate`` is the row-state rule as SQL
``runtime``     what every process stands on: ``config`` (the one frozen object), ``logs``,
                ``metrics``, ``httpd``, ``exit_codes``
``domain``      pure values and decisions: ``events``, ``codec``, ``decide``, ``backoff``,
                ``classify``, ``payloads``, ``handlers``, ``registry``, ``rowstate``,
                ``errors``; imports no driver
==============  ===========================================================================

``adapters`` and ``store`` are independent of each other: a component joins them.
"""
