//! tend on real hosts: Debian 12 VMs booted by their own kernel, systemd as
//! PID 1, cgroup v2 (and v1 from the kernel command line), reached over ssh.
//! Process, systemd and podman services converge with memory limits in
//! force; a service allocating past its limit is killed by the kernel and
//! the plan says so; after a reboot and a hard reset the podman service
//! serves before any reconcile (`--restart=always`, podman-restart.service,
//! its new pid adopted by the probe), and after the next reconcile every
//! service serves once and the plan is clean. A container tend stopped (the
//! podman service moved to the process runtime) does not come back at the
//! next boot.

use super::vm_common::{
    apply_clean, assert_limits, assert_serving, eat, manifests, plan_entry, prepare, record_field,
    service_doc, wait_ok, SERVICES,
};
use tend_e2e::testbed::{skip_unless_vm, VmHost, VmOptions};

fn boot(test: &str, name: &str, v1: bool) -> Option<VmHost> {
    if !skip_unless_vm(test) {
        return None;
    }
    let mut o = VmOptions::new(name);
    o.cgroup_v1 = v1;
    let vm = VmHost::start(o).unwrap_or_else(|e| panic!("{test}: VM: {e:#}"));
    let cg = vm
        .exec_ok("stat -f -c %T /sys/fs/cgroup")
        .expect("cgroup fs");
    let want = if v1 { "tmpfs" } else { "cgroup2fs" };
    assert_eq!(cg.trim(), want, "cgroup layout of {name}");
    prepare(&vm);
    Some(vm)
}

/// Converge, check limits, OOM-kill both hogs and see the plan report it,
/// converge again.
fn converge_and_oom(vm: &VmHost, dir: &std::path::Path, v1: bool) {
    apply_clean(vm, dir, "first apply");
    assert_serving(vm, "first apply");
    assert_limits(vm, v1);
    // The container's scope stops after podman-restart.service (its ExecStop
    // stops the container first): else a reboot waits 90 s for conmon.
    let dropins = vm
        .exec_ok("systemctl show -p DropInPaths --value \"libpod-$(podman inspect --format '{{.Id}}' tend-web-pod).scope\"")
        .expect("the container's scope");
    assert!(
        dropins.contains("/etc/systemd/system/libpod-.scope.d/tend.conf"),
        "drop-ins of web-pod's scope: {dropins}"
    );
    for (name, _, port) in SERVICES.iter().filter(|s| s.0.starts_with("hog")) {
        eat(vm, name, *port);
        let (code, entry) = plan_entry(dir, name);
        assert_eq!(code, 2, "{name} OOM-killed: plan exit");
        let reasons = entry["reasons"].to_string();
        assert!(reasons.contains("oom_killed"), "{name}: {entry}");
        assert!(
            entry["oom_kills"].as_u64().is_some_and(|n| n >= 1),
            "{name}: {entry}"
        );
    }
    apply_clean(vm, dir, "apply after the OOM kills");
    assert_serving(vm, "apply after the OOM kills");
}

/// After the VM came back: the podman service serves already (podman
/// restarted it, and the probe adopts its new pid: in sync before any
/// reconcile), records all there, the next apply converges without
/// restarting the container, every service serves once, the plan is clean.
fn after_restart(vm: &VmHost, dir: &std::path::Path, when: &str, boot_before: &str) {
    let boot = vm.boot_id().expect("boot id");
    assert_ne!(boot, boot_before, "{when}: same boot");
    for (name, _, _) in SERVICES {
        assert_eq!(
            record_field(vm, name, "version").as_deref(),
            Some("1"),
            "{when}: record of {name}"
        );
    }
    let (_, _, port) = SERVICES
        .iter()
        .find(|s| s.1 == "podman")
        .expect("a podman service");
    // podman-restart.service runs late in the boot: a bounded wait.
    wait_ok(
        vm,
        &format!("curl -fsS --max-time 5 http://127.0.0.1:{port}/health"),
        std::time::Duration::from_secs(120),
        &format!("{when}: web-pod is not serving before the reconcile"),
        "systemctl status podman-restart.service; podman ps -a",
    );
    let (_, entry) = plan_entry(dir, "web-pod");
    assert_eq!(
        entry["status"], "in_sync",
        "{when}: web-pod adopted: {entry}"
    );
    let pid = record_field(vm, "web-pod", "pid");
    let podman_pid = vm
        .exec_ok("podman inspect --format '{{.State.Pid}}' tend-web-pod")
        .expect("podman inspect");
    assert_eq!(
        pid.as_deref(),
        Some(podman_pid.trim()),
        "{when}: adopted pid"
    );
    apply_clean(vm, dir, when);
    assert_eq!(
        record_field(vm, "web-pod", "pid"),
        pid,
        "{when}: the apply restarted the container podman had restarted"
    );
    assert_serving(vm, when);
}

#[test]
fn a_cgroup_v2_vm_converges_every_runtime_reports_oom_kills_and_survives_reboot_and_reset() {
    let test =
        "a_cgroup_v2_vm_converges_every_runtime_reports_oom_kills_and_survives_reboot_and_reset";
    let Some(vm) = boot(test, "vm-v2", false) else {
        return;
    };
    let dir = manifests(&vm);
    converge_and_oom(&vm, dir.path(), false);

    let before = vm.boot_id().expect("boot id");
    vm.reboot().expect("reboot");
    after_restart(&vm, dir.path(), "after reboot", &before);

    let before = vm.boot_id().expect("boot id");
    vm.hard_reset().expect("system_reset");
    after_restart(&vm, dir.path(), "after a hard reset", &before);

    stopped_stays_stopped(&vm, dir.path());
    eprintln!(
        "testbed: {} boots to ssh {:?} s (start, reboot, hard reset, reboot without a container), qemu RSS {:?} KiB",
        vm.name,
        vm.boot_seconds(),
        vm.qemu_rss_kib()
    );
}

/// web-pod moves to the process runtime (same port): tend stops its
/// container. After a reboot podman-restart.service has run and started no
/// container of it, nothing holds its port until the reconcile, which starts
/// the process; then every service serves once and the plan is clean.
fn stopped_stays_stopped(vm: &VmHost, dir: &std::path::Path) {
    let (_, _, port) = SERVICES.iter().find(|s| s.0 == "web-pod").expect("web-pod");
    let fleet = dir.join("fleet.yaml");
    let text = std::fs::read_to_string(&fleet).expect("fleet.yaml");
    let podman = service_doc("web-pod", "podman", *port, &vm.name);
    assert!(text.contains(&podman), "web-pod's document in {text}");
    let process = service_doc("web-pod", "process", *port, &vm.name);
    std::fs::write(&fleet, text.replace(&podman, &process)).expect("write fleet.yaml");
    apply_clean(vm, dir, "web-pod moved to the process runtime");
    let containers = "podman ps -a --format '{{.Names}}' --filter name='^tend-web-pod$'";
    let left = vm.exec_ok(containers).expect("podman ps");
    assert_eq!(left.trim(), "", "web-pod's container after tend stopped it");

    let before = vm.boot_id().expect("boot id");
    vm.reboot().expect("reboot");
    assert_ne!(vm.boot_id().expect("boot id"), before, "same boot");
    // podman-restart.service (oneshot) is active once its start finished.
    wait_ok(
        vm,
        "systemctl is-active --quiet podman-restart.service",
        std::time::Duration::from_secs(180),
        "podman-restart.service did not finish starting",
        "systemctl status podman-restart.service",
    );
    let left = vm.exec_ok(containers).expect("podman ps");
    assert_eq!(left.trim(), "", "a boot brought web-pod's container back");
    let held = vm
        .exec_ok(&format!("ss -Hltn 'sport = :{port}'"))
        .expect("ss");
    assert_eq!(held.trim(), "", "port {port} is held before the reconcile");
    apply_clean(vm, dir, "after a reboot, web-pod as a process");
    assert_eq!(
        record_field(vm, "web-pod", "runtime").as_deref(),
        Some("process")
    );
    assert_serving(vm, "after a reboot, web-pod as a process");
}

#[test]
fn a_cgroup_v1_vm_converges_every_runtime_reports_oom_kills_and_survives_a_hard_reset() {
    let test = "a_cgroup_v1_vm_converges_every_runtime_reports_oom_kills_and_survives_a_hard_reset";
    let Some(vm) = boot(test, "vm-v1", true) else {
        return;
    };
    let dir = manifests(&vm);
    converge_and_oom(&vm, dir.path(), true);

    let before = vm.boot_id().expect("boot id");
    vm.hard_reset().expect("system_reset");
    after_restart(&vm, dir.path(), "after a hard reset", &before);
    eprintln!(
        "testbed: {} boots to ssh {:?} s, qemu RSS {:?} KiB",
        vm.name,
        vm.boot_seconds(),
        vm.qemu_rss_kib()
    );
}
