"""The slurm backend and the folders on the shared filesystem: who can write them, where the logs are."""

from __future__ import annotations

from syncd.backends.base import RemoteRef
from syncd.backends.slurm import SlurmBackend, SlurmOptions, unwritable_by


def test_slurm_stage_refuses_a_work_folder_the_slurm_user_cannot_write(tmp_path):
    folder = tmp_path / "ctrl"
    folder.mkdir(mode=0o755)
    why = unwritable_by(folder, "nobody")
    assert why is not None and "mode 0755" in why and "the daemon runs as" in why
    folder.chmod(0o777)
    assert unwritable_by(folder, "nobody") is None
    assert unwritable_by(folder, "no-such-user-on-this-host") is None, "a cluster-only account is not judged here"


def test_slurm_logs_read_the_folder_the_job_was_given_whatever_workdir_root_says_now(tmp_path):
    """`syncd logs` in a shell without SLURM_WORKDIR_ROOT reads the config's default: the job's own
    folder, stored with it, still finds what it has written so far."""
    given = tmp_path / "shared" / "syncd-job-1"
    (given / "ctrl").mkdir(parents=True)
    (given / "ctrl" / "stdout.txt").write_text("tick 1\n")
    options = SlurmOptions(
        type="slurm", url="http://127.0.0.1:9", user="nobody", token={"env": "NO_TOKEN"}, workdir_root="/nowhere"
    )
    backend = SlurmBackend("cluster", options, tmp_path / "state")
    found = backend.logs(RemoteRef("1", {"dir": str(given), "key": "syncd-job-1"}))
    assert found.stdout == given / "ctrl" / "stdout.txt" and found.stderr is None
