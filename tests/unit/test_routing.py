import pytest

from broker.routing import topic_matches


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("job.run", "job.run", True),
        ("job.run", "job.cancel", False),
        ("job.*", "job.run", True),
        ("job.*", "job", False),
        ("job.*", "job.run.now", False),
        ("*.run", "job.run", True),
        ("#", "", True),
        ("#", "a.b.c", True),
        ("job.#", "job", True),
        ("job.#", "job.run.now", True),
        ("#.now", "job.run.now", True),
        ("#.now", "now", True),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.b.c.z", True),
        ("a.#.z", "a.b.c", False),
        ("abc.#", "abc-1.x", False),
        ("*", "", False),
    ],
)
def test_topic_matching_follows_amqp(pattern: str, key: str, expected: bool) -> None:
    assert topic_matches(pattern, key) is expected
