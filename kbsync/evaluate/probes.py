"""Fixed probe sets for the locality, general-knowledge and drift gates."""

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

# Well-known facts (prompt, the answer a good model gives), shipped with kbsync and never
# drawn from the user's facts. The `general_knowledge` gate compares the candidate's top-1
# next token on these prompts with the BASE model's (not the parent's), so damage that
# accumulates batch by batch (the Eiffel Tower answered with noise after 400 edits, issue
# 22) is caught. The answers document intent; the gate reads the base model's own tokens,
# so a small model that gets some of these wrong is measured against what it said.
GENERAL_FACTS: tuple[tuple[str, str], ...] = (
    ("The Eiffel Tower is in the city of", "Paris"),
    ("The Colosseum is in the city of", "Rome"),
    ("The Statue of Liberty is in the city of", "New York"),
    ("Big Ben is a clock tower in the city of", "London"),
    ("The capital of Japan is", "Tokyo"),
    ("The capital of Germany is", "Berlin"),
    ("The capital of Italy is", "Rome"),
    ("The capital of Spain is", "Madrid"),
    ("The capital of Russia is", "Moscow"),
    ("The capital of Egypt is", "Cairo"),
    ("The capital of Canada is", "Ottawa"),
    ("The capital of Australia is", "Canberra"),
    ("The Great Wall is in the country of", "China"),
    ("The Taj Mahal is in the country of", "India"),
    ("Mount Everest is in the mountain range of the", "Himalayas"),
    ("The longest river in Africa is the", "Nile"),
    ("The largest ocean on Earth is the", "Pacific"),
    ("The planet closest to the Sun is", "Mercury"),
    ("The Red Planet is", "Mars"),
    ("The Earth orbits the", "Sun"),
    ("Water freezes at zero degrees", "Celsius"),
    ("The chemical symbol for water is", "H2O"),
    ("The chemical symbol for iron is", "Fe"),
    ("Plants make food from sunlight by", "photosynthesis"),
    ("The speed of light is about 300,000 kilometres per", "second"),
    ("Romeo and Juliet was written by William", "Shakespeare"),
    ("The Mona Lisa was painted by Leonardo da", "Vinci"),
    ("The theory of relativity was developed by Albert", "Einstein"),
    ("The law of gravity was described by Isaac", "Newton"),
    ("The first man to walk on the Moon was Neil", "Armstrong"),
    ("Microsoft was founded by Bill", "Gates"),
    ("Apple was co-founded by Steve", "Jobs"),
    ("The currency of the United States is the", "dollar"),
    ("The currency of Japan is the", "yen"),
    ("The official language of Brazil is", "Portuguese"),
    ("The official language of Mexico is", "Spanish"),
    ("A week has seven", "days"),
    ("A year has twelve", "months"),
    ("Two plus two equals", "four"),
    ("The opposite of up is", "down"),
    ("The color of the clear sky is", "blue"),
    ("Bees make", "honey"),
)


def general_prompts() -> list[str]:
    """The prompts of GENERAL_FACTS, in their fixed order."""
    return [prompt for prompt, _ in GENERAL_FACTS]
