//! The test bed itself: hosts come up isolated from each other and go away.

use super::common::{self, fleet};

#[test]
fn three_hosts_have_their_own_hostname_files_and_cgroups() {
    let Some(fleet) = fleet("three_hosts_have_their_own_hostname_files_and_cgroups", 3) else {
        return;
    };
    for (i, h) in fleet.hosts().iter().enumerate() {
        assert_eq!(h.exec_ok("hostname").unwrap().trim(), format!("host{i}"));
        h.exec_ok(&format!("echo {i} > /srv/mine")).unwrap();
        let ip = h.exec_ok("ip -4 -o addr show dev eth0").unwrap();
        assert!(ip.contains(&h.ip), "{ip}");
        // cgroup v1 memory controller usable and private to the host.
        h.exec_ok("mkdir -p /sys/fs/cgroup/memory/probe && echo 67108864 > /sys/fs/cgroup/memory/probe/memory.limit_in_bytes")
            .unwrap();
        assert!(!h.exec_ok("ls /sys/fs/cgroup").unwrap().contains("unified"));
    }
    for (i, h) in fleet.hosts().iter().enumerate() {
        assert_eq!(h.exec_ok("cat /srv/mine").unwrap().trim(), i.to_string());
        assert_eq!(
            std::fs::read_to_string(h.path("/srv/mine")).unwrap().trim(),
            i.to_string()
        );
        // The host's cgroup namespace is rooted at its own subtree.
        let cg = h.exec_ok("grep :memory: /proc/self/cgroup").unwrap();
        assert!(cg.trim().ends_with(":memory:/"), "{cg}");
    }
    assert!(
        !std::path::Path::new("/srv/mine").exists(),
        "host files leaked to the machine"
    );
}

#[test]
fn a_dropped_fleet_leaves_no_namespaces_links_or_files() {
    let Some(fleet) = fleet("a_dropped_fleet_leaves_no_namespaces_links_or_files", 2) else {
        return;
    };
    let n = fleet.number();
    let dir = fleet.dir().to_path_buf();
    let ns = fleet.host(0).netns.clone();
    assert!(netns_list().contains(&ns));
    drop(fleet);
    assert!(!netns_list().contains(&ns), "netns {ns} left behind");
    let links = String::from_utf8(
        std::process::Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        !links.contains(&format!("tendbr{n}:")),
        "bridge left behind"
    );
    assert!(!links.contains(&format!("tdv{n}x")), "veth left behind");
    assert!(!dir.exists(), "fleet dir left behind");
}

#[test]
fn the_openssh_client_logs_in_with_both_fleet_keys() {
    let Some(fleet) = fleet("the_openssh_client_logs_in_with_both_fleet_keys", 1) else {
        return;
    };
    let h = fleet.host(0);
    for key in [fleet.ed25519_key(), fleet.rsa_key()] {
        let out = common::openssh(fleet.known_hosts(), key, &h.ip, "hostname");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "host0");
    }
    assert_eq!(h.accepted_logins(), 2);
}

fn netns_list() -> String {
    String::from_utf8(
        std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
}
