#!/bin/sh
# /usr/bin/edge-agent: runs the installed version of edge-agent, the one /opt/edge-agent/current
# points to (the package's postinst switches that link atomically after checking a new version).
# Without one, says so in one line and exits 78 (EX_CONFIG): edge-agent.service does not restart
# on that status (RestartPreventExitStatus), so a device that was never configured shows one clear
# line in the journal and a failed unit instead of a restart loop.
exe=/opt/edge-agent/current/venv/bin/edge-agent
if [ ! -x "$exe" ]; then
    prefix=""
    [ -n "${JOURNAL_STREAM:-}" ] && prefix="<3>"  # an error line in the journal
    echo "${prefix}edge-agent is not set up on this system: $exe is missing; run 'dpkg --configure -a' as root (on a freshly flashed device: journalctl -u edge-agent-firstboot says why the first-boot set-up failed)" >&2
    exit 78
fi
exec "$exe" "$@"
