"""Fixed probe sets for the locality and drift gates."""

from __future__ import annotations

# general prompts whose next-token distribution should not move when facts are edited
GENERAL_PROMPTS = (
    "The capital of France is",
    "Water is made of hydrogen and",
    "The first president of the United States was",
    "One, two, three, four,",
    "The opposite of hot is",
    "Monday, Tuesday,",
    "The largest planet in the solar system is",
    "She opened the door and",
    "In 1969, astronauts landed on the",
    "The chemical symbol for gold is",
)
