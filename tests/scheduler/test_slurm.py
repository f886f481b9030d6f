"""``python -m scheduler slurm`` without a cluster (its ``main``, in this process): the script it
writes (bash's own parser) and bad input as one line and exit code 2. The real cluster run is
tests/system/test_slurm.py."""

from __future__ import annotations

import os
import subprocess

import pytest

from scheduler.cli import main
from scheduler.slurm import seconds

FARM = {"FARM_REDIS_URL": "redis://redis.cluster:6379/0", "FARM_STORAGE_URL": "s3://bl30k/bl30k",
        "FARM_S3_ENDPOINT": "https://s3.example", "REDIS_PASSWORD": "sekrit-pw",
        "AWS_ACCESS_KEY_ID": "key-id", "AWS_SECRET_ACCESS_KEY": "sekrit-key"}


@pytest.fixture
def slurm(tmp_path, monkeypatch, capsys):
    """``python -m scheduler slurm --dir <tmp>/s ARGS`` in this process, with only ``env`` of the
    farm's variables set: (exit code, stdout, stderr)."""
    def run(*args: str, env: dict | None = None) -> tuple[int, str, str]:
        for name in list(os.environ):
            if name.startswith(("FARM_", "REDIS_", "AWS_")):
                monkeypatch.delenv(name)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        code = main(["slurm", "--dir", str(tmp_path / "s"), *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_the_script_asks_for_one_gpu_per_worker_and_reads_its_settings_from_a_file(slurm, tmp_path):
    code, _, err = slurm("--workers", "8", "--max-running", "4", "--time", "2-00:00:00",
                         "--partition", "gpu", "--sbatch=--constraint=a100", env=FARM)
    assert code == 0, err
    script = (tmp_path / "s" / "workers.sbatch").read_text()
    for line in ("#SBATCH --array=0-7%4", "#SBATCH --gres=gpu:1", "#SBATCH --requeue",
                 "#SBATCH --signal=B:TERM@120", "#SBATCH --time=2-00:00:00",
                 "#SBATCH --partition=gpu", "#SBATCH --constraint=a100", "#SBATCH --export=NONE"):
        assert line in script.splitlines()
    assert 'FARM_GPUS="${CUDA_VISIBLE_DEVICES:-none}"' in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # bash parses it
    env = (tmp_path / "s" / "farm.env").read_text()
    assert "FARM_REDIS_URL=redis://redis.cluster:6379/0" in env
    for value in ("sekrit-pw", "sekrit-key", "key-id"):  # secrets: files the env file names
        assert value not in env and value not in script
    assert (tmp_path / "s" / "secrets" / "redis_password").read_text() == "sekrit-pw"
    for path in ("farm.env", "secrets/redis_password", "secrets/s3_secret_key"):
        assert (tmp_path / "s" / path).stat().st_mode & 0o077 == 0


def test_an_image_runs_the_worker_in_apptainer(slurm, tmp_path):
    code, _, err = slurm("--workers", "2", "--image", "/shared/bl30k-worker.sif",
                         "--bind", "/shared/assets", env=FARM)
    assert code == 0, err
    script = (tmp_path / "s" / "workers.sbatch").read_text()
    assert "apptainer exec --nv --pwd /app" in script and "--bind /shared/assets" in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_time_limits():
    assert [seconds(t) for t in ("90", "1:30", "2:00:00", "1-0", "1-2:30", "1-00:00:10")] == \
        [5400, 90, 7200, 86400, 95400, 86410]


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--workers", "0"], FARM, "--workers must be at least 1"),
    (["--workers", "2", "--time", "soon"], FARM, "--time 'soon' is not a Slurm time limit"),
    (["--workers", "2", "--time", "1:00", "--hand-back-s", "120"], FARM,
     "must be at least 10 and below the time limit (60 s)"),
    (["--workers", "2", "--mem", "lots"], FARM, "--mem 'lots' is not a Slurm memory size"),
    (["--workers", "2", "--gres", "gpu"], FARM, "--gres 'gpu' is not a GRES request"),
    (["--workers", "2"], {}, "FARM_REDIS_URL is not set"),
    (["--workers", "2", "--env-file", "/nonexistent/farm.env"], {}, "no such file"),
    (["--workers", "2", "--python", "/nonexistent/python"], FARM, "--python /nonexistent"),
    (["--workers", "2", "--workdir", "/"], FARM, "not the project"),
    (["--workers", "2", "--submit"], {**FARM, "PATH": "/nonexistent"}, "sbatch not found"),
])
def test_bad_input_is_one_line_and_exit_2(slurm, tmp_path, args, env, message):
    code, out, err = slurm(*args, env=env)
    assert code == 2, out + err
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1
    if "--submit" not in args:  # bad input writes nothing (the script stays for a failed submit)
        assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(("line", "message"), [
    ("FARM_REDIS_URL=redis://r:6379/0\nFARM_STORAGE_URL=s3://b/p\nFARM_SEEED=1", "FARM_SEEED is "
     "not a farm setting"),
    ("FARM_REDIS_URL=redis://r:6379/0\nFARM_STORAGE_URL=s3://b/p\nFARM_GPUS=0", "FARM_GPUS is "
     "set per job"),
    ("FARM_REDIS_URL=redis://r:6379/0\nthis is not a line", ":2: not a NAME=value line"),
    ("FARM_REDIS_URL=redis://r:6379/0", "FARM_STORAGE_URL is not set"),
    ("FARM_REDIS_URL='redis://r:6379/0", ":1: No closing quotation"),
])
def test_a_bad_env_file_names_its_line(slurm, tmp_path, line, message):
    env_file = tmp_path / "farm.env"
    env_file.write_text(line + "\n")
    code, _, err = slurm("--workers", "1", "--env-file", str(env_file))
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
