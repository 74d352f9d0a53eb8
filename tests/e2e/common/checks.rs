//! The checks every fault test ends with: nothing half-installed, every
//! record parses, one process per service.

use std::collections::BTreeMap;
use tend::record::Record;
use tend_e2e::testbed::TestHost;

/// Every record under `root` on the host, parsed (a record that does not
/// parse fails the test).
pub fn all_records(h: &TestHost, root: &str) -> BTreeMap<String, Record> {
    let ls = h
        .exec_ok(&format!("ls -1 {root}/records 2>/dev/null || true"))
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    for f in ls
        .lines()
        .filter(|f| f.ends_with(".rec") && !f.starts_with('.'))
    {
        let text = h
            .exec_ok(&format!("cat {root}/records/{f}"))
            .expect("read record");
        let rec = Record::parse(&text)
            .unwrap_or_else(|e| panic!("{}: record {f} does not parse ({e}):\n{text}", h.name));
        out.insert(f.trim_end_matches(".rec").to_string(), rec);
    }
    out
}

/// Leftovers of an interrupted action anywhere under `root` (temp release
/// dirs, staged records, temp env files and links).
pub fn leftovers(h: &TestHost, root: &str) -> Vec<String> {
    h.exec_ok(&format!("find {root} -name '.tmp-*' 2>/dev/null || true"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Processes on the host (the machine: there is no pid namespace) running
/// exactly this httpd command line.
pub fn httpds(h: &TestHost, port: u16) -> usize {
    let out = h
        .exec_ok(&format!(
            "pgrep -f -x 'busybox httpd -f -p {port} -h www' | wc -l"
        ))
        .unwrap_or_default();
    out.trim().parse().unwrap_or(usize::MAX)
}

/// The service's memory cgroup members (v1 or v2 hierarchy).
pub fn cgroup_procs(h: &TestHost, root: &str, svc: &str) -> usize {
    let cg = tend::runtime::cgroup_name(root, svc);
    let out = h
        .exec_ok(&format!(
            "cat /sys/fs/cgroup/memory/tend/{cg}/cgroup.procs /sys/fs/cgroup/tend/{cg}/cgroup.procs 2>/dev/null || true"
        ))
        .unwrap_or_default();
    out.lines().filter(|l| !l.trim().is_empty()).count()
}

/// After a converge: the service runs exactly once (one httpd on its port,
/// one process in its cgroup, the recorded pid alive), answers with `body`,
/// its record parses and names the release `current` points to, and nothing
/// temporary is left under the root.
pub fn assert_intact(h: &TestHost, root: &str, svc: &str, port: u16, version: &str, body: &str) {
    let recs = all_records(h, root);
    let rec = recs
        .get(svc)
        .unwrap_or_else(|| panic!("{}: no record of {svc}", h.name));
    assert_eq!(rec.version, version, "{}: {svc} version", h.name);
    assert_eq!(
        httpds(h, port),
        1,
        "{}: {svc}: exactly one httpd on {port}",
        h.name
    );
    assert_eq!(
        cgroup_procs(h, root, svc),
        1,
        "{}: {svc}: one process in its cgroup",
        h.name
    );
    let pid = rec.pid.expect("recorded pid");
    h.exec_ok(&format!("kill -0 {pid}"))
        .unwrap_or_else(|e| panic!("{svc}: recorded pid: {e}"));
    let current = h
        .exec_ok(&format!("readlink {root}/releases/{svc}/current"))
        .unwrap_or_default();
    assert_eq!(current.trim(), rec.release, "{}: {svc}: current", h.name);
    h.exec_ok(&format!(
        "test -f {root}/releases/{svc}/{}/.tend/complete",
        rec.release
    ))
    .unwrap_or_else(|e| panic!("{svc}: running release incomplete: {e}"));
    assert_eq!(
        super::super::apply::get(h, port, "/health").as_deref(),
        Some(body),
        "{}: {svc} answers",
        h.name
    );
    let left = leftovers(h, root);
    assert!(left.is_empty(), "{}: leftovers: {left:?}", h.name);
}
