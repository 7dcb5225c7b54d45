//! `gym-telemetry-daemon policies list|show|import|verify` on a var dir, no daemon running.

use std::{fs, path::Path, process::Command};

fn daemon(var: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gym-telemetry-daemon"))
        .arg("policies")
        .args(args)
        .arg("--var-dir")
        .arg(var)
        .env_remove("GYM_TELEMETRY_VAR_DIR")
        .output()
        .expect("run the daemon binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn list_show_import_and_verify_a_var_dir() {
    let var = tempfile::tempdir().expect("tempdir");
    let root = var.path().join("policies/FrozenLake-v1");
    fs::create_dir_all(&root).expect("mkdir");
    let q = "{\n  \"format\": \"q_table/v1\",\n  \"metadata\": {\"run_id\": \"train-1\", \"agent_id\": \"bdi_rl_demo\"},\n  \"q_table\": [[0.0, 0.5], [0.25, 1.0]]\n}";
    fs::write(root.join("bdi_rl_demo.json"), q).expect("write");
    fs::write(root.join("broken.json"), "{\"format\": \"q_tab").expect("write");

    let (code, out, err) = daemon(var.path(), &["list"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with(
            "FrozenLake-v1/bdi_rl_demo.json\tFrozenLake-v1\tbdi_rl_demo\tq_table/v1\t"
        ),
        "{out}"
    );
    assert!(lines[0].ends_with("\ttrain-1"), "{out}");
    assert!(
        lines[1].starts_with("INVALID\tFrozenLake-v1/broken.json\tnot_json: "),
        "{out}"
    );

    let (code, out, _) = daemon(var.path(), &["show", "FrozenLake-v1/bdi_rl_demo.json"]);
    assert_eq!(code, 0);
    let m: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(m["observation_space"], "Discrete(2)");
    assert_eq!(m["origin"], "discovered");

    let npz = var.path().join("ppo.npz");
    fs::write(&npz, b"\x93NUMPY weights").expect("write");
    let (code, out, err) = daemon(
        var.path(),
        &[
            "import",
            npz.to_str().expect("utf-8"),
            "--env",
            "CartPole-v1",
            "--format",
            "npz",
            "--action-space",
            "Discrete(2)",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let m: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(m["policy_id"], "CartPole-v1/ppo.npz");
    let (_, out, _) = daemon(var.path(), &["list", "--format", "npz"]);
    assert!(
        out.starts_with("CartPole-v1/ppo.npz\tCartPole-v1\tppo\tnpz/v1\t14 B"),
        "{out}"
    );

    // verify: the broken file alone makes it fail; a named good policy passes.
    let (code, out, _) = daemon(
        var.path(),
        &[
            "verify",
            "FrozenLake-v1/bdi_rl_demo.json",
            "CartPole-v1/ppo.npz",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("ok\t")).count(), 2);
    let (code, _, _) = daemon(var.path(), &["verify"]);
    assert_eq!(code, 1, "an invalid file fails a full verify");

    // The checkpoint changes on disk (same size): verify exits non-zero and says which.
    fs::write(root.join("bdi_rl_demo.json"), q.replace("0.25", "0.75")).expect("rewrite");
    let (code, out, _) = daemon(var.path(), &["verify", "FrozenLake-v1/bdi_rl_demo.json"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("MISMATCH\tFrozenLake-v1/bdi_rl_demo.json\tmanifest "),
        "{out}"
    );
}
