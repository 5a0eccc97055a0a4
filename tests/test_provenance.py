import json
from pathlib import Path

from liandan.jobs import TextualInversionJob, job_from_dict
from liandan.provenance import file_sha256, provenance, provenance_path, write_provenance


def test_record_beside_the_artifact_has_job_hashes_versions_and_seed(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"not really a png")
    job = TextualInversionJob(name="cat", vectors=2)
    artifact = tmp_path / "embeddings" / "cat.pt"
    artifact.parent.mkdir()
    artifact.write_bytes(b"x")
    written = write_provenance(
        artifact, provenance(job, dataset_files=[image], seed=7, model={"family": "sd1"})
    )
    assert written == provenance_path(artifact) == tmp_path / "embeddings" / "cat.liandan.json"
    record = json.loads(written.read_text())
    assert job_from_dict(record["job"]) == job
    assert record["dataset"] == {str(image): file_sha256(image)}
    assert record["seed"] == 7 and record["model"] == {"family": "sd1"}
    assert "torch" in record["libraries"] and "diffusers" in record["libraries"]
