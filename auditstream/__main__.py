"""``python -m auditstream``: the same CLI as the ``auditstream`` command."""

from auditstream.cli import main

raise SystemExit(main())
