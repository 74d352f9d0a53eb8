# The bench services, written the way a pyinfra user would: builtin
# operations, a fact that says whether each service runs (a pid file and
# `kill -0`, as the Ansible playbook), and a health check after a start.
#
# Converge:  pyinfra -y inventory.py deploy.py
# No-op:     pyinfra -y --dry inventory.py deploy.py
from pyinfra import host
from pyinfra.facts.server import Command
from pyinfra.operations import files, server

ROOT = "/srv/pyinfra-bench"

for svc in host.data.services:
    d = f"{ROOT}/{svc['name']}"
    files.directory(name=f"{svc['name']}: directory", path=d, mode="755")
    files.put(
        name=f"{svc['name']}: app files",
        src="files/index.html",
        dest=f"{d}/index.html",
        mode="644",
    )
    files.template(
        name=f"{svc['name']}: environment file",
        src="templates/app.env.j2",
        dest=f"{d}/app.env",
        mode="600",
        svc=svc,
    )
    alive = host.get_fact(
        Command,
        f'kill -0 "$(cat {d}/app.pid 2>/dev/null)" 2>/dev/null && echo up || echo down',
    )
    if alive != "up":
        server.shell(
            name=f"{svc['name']}: start and check health",
            commands=[
                f"cd {d} && set -a && . ./app.env && set +a && "
                f"(setsid nohup /bin/busybox httpd -f -p {svc['port']} -h . </dev/null >>app.log 2>&1 & echo $! > app.pid)",
                f"for i in $(seq 30); do wget -q -O /dev/null http://127.0.0.1:{svc['port']}/ && exit 0; sleep 1; done; exit 1",
            ],
        )
