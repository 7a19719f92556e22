"""The sweep's Jobs (k8s/sweep/): the Indexed Job has one completion per configuration of the grid its args name, as
training.sweep counts them, so the two cannot drift; the pods' command lines are ones training.sweep takes; the runs
volume and working directory are the training Job's; the table Job reads the directory the sweep writes. (Schema,
checkov and the restricted standard are checked for them as for every overlay: they are in k8s_helpers.OVERLAYS.)"""
from __future__ import annotations

from k8s_helpers import container, find, selects

from training import sweep

INDEX = "$(JOB_COMPLETION_INDEX)"


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_completions_are_the_grids_size_and_every_index_is_a_configuration(docs):
    job = find(docs["prod-sweep"], "Job", "charlm-sweep")
    spec = job["spec"]
    args = container(spec["template"]["spec"], "sweep")["args"]
    grid = flag(args, "--grid")
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == len(sweep.GRIDS[grid]) == 12
    assert 1 <= spec["parallelism"] <= spec["completions"]
    parser = sweep.build_sweep_parser()
    for index in range(spec["completions"]):  # what the pod of each index runs, as training.sweep reads it
        parsed = parser.parse_args([str(index) if a == INDEX else a for a in args])
        assert (parsed.command, parsed.grid, parsed.index) == ("run-one", grid, index)
        assert 0 <= parsed.index < len(sweep.GRIDS[parsed.grid])


def test_the_index_comes_from_the_job_controller(docs):
    job = find(docs["prod-sweep"], "Job", "charlm-sweep")
    c = container(job["spec"]["template"]["spec"], "sweep")
    assert c["command"] == ["python", "-m", "training.sweep"]
    assert flag(c["args"], "--index") == INDEX
    # set by the controller after the container's own env, so it must not be redefined (or referenced) there
    assert all(e["name"] != "JOB_COMPLETION_INDEX" and INDEX not in str(e) for e in c.get("env", []))


def test_retries_are_per_index_and_do_not_repeat_a_failure_that_recurs(docs):
    spec = find(docs["prod-sweep"], "Job", "charlm-sweep")["spec"]
    assert spec["backoffLimitPerIndex"] >= 1 and "maxFailedIndexes" not in spec  # every index runs, failed or not
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # backoffLimitPerIndex needs it
    rules = spec["podFailurePolicy"]["rules"]
    fail_index = next(r for r in rules if r["action"] == "FailIndex")["onExitCodes"]
    assert fail_index["containerName"] == "sweep" and fail_index["operator"] == "In"
    # run-one exits as training does: 1 (diverged, bad corpus) and 2 (refused flags) recur; a kill (137) may not
    assert set(fail_index["values"]) == {1, 2}
    assert sweep.failure_exit_status(-9) == 137 and sweep.failure_exit_status(1) == 1
    ignored = next(r for r in rules if r["action"] == "Ignore")["onPodConditions"]
    assert ignored == [{"type": "DisruptionTarget", "status": "True"}]


def test_runs_land_on_the_training_jobs_volume_and_the_table_reads_them(docs):
    train_pod = find(docs["prod-train"], "Job", "charlm-train")["spec"]["template"]["spec"]
    train = container(train_pod, "train")
    sweep_pod = find(docs["prod-sweep"], "Job", "charlm-sweep")["spec"]["template"]["spec"]
    table_job = find(docs["prod-sweep-table"], "Job", "charlm-sweep-table")
    table_pod = table_job["spec"]["template"]["spec"]
    claim = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in train_pod["volumes"]
             if "persistentVolumeClaim" in v}["runs"]
    for pod, name in ((sweep_pod, "sweep"), (table_pod, "table")):
        c = container(pod, name)
        assert c["workingDir"] == train["workingDir"]
        runs = next(v for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim)
        assert next(m for m in c["volumeMounts"] if m["name"] == runs["name"])["mountPath"] == train["workingDir"]
    sweep_args = container(sweep_pod, "sweep")["args"]
    table_args = container(table_pod, "table")["args"]
    assert flag(table_args, "--sweep-dir") == flag(sweep_args, "--sweep-dir")
    parsed = sweep.build_sweep_parser().parse_args(table_args)
    assert parsed.command == "table"
    assert sweep_pod["terminationGracePeriodSeconds"] == train_pod["terminationGracePeriodSeconds"]
    assert table_job["spec"]["podFailurePolicy"]["rules"][-1]["action"] == "FailJob"  # an incomplete table: no retry


def test_the_network_policy_selects_both_jobs_pods(docs):
    policy = find(docs["prod-sweep"], "NetworkPolicy", "charlm-sweep")["spec"]
    assert policy["policyTypes"] == ["Ingress"] and not policy.get("ingress")
    for name, job in (("prod-sweep", "charlm-sweep"), ("prod-sweep-table", "charlm-sweep-table")):
        labels = find(docs[name], "Job", job)["spec"]["template"]["metadata"]["labels"]
        assert selects(policy["podSelector"], labels), job
