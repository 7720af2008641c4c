"""The embedded default dataset: seeded, human-readable, and strongly order-dependent.

Items belong to topics (e.g. "Space Opera", "Sourdough Baking") and carry titles built from the
topic's vocabulary, so an LLM can read what an item is about. Users move through the catalogue
like a reader through series: after an item, with probability `follow_prob` they take one of its
few *successors* (items of a successor topic at a nearby level), otherwise they pick an item by
popularity. So the last items of a history predict the next one well, while item frequencies alone
(popularity) and a shuffled history do not. Timestamps increase with realistic gaps.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from components.config import SyntheticParams
from components.data.schema import canonical_interactions, canonical_items

TOPICS: dict[str, list[str]] = {
    "Space Opera": ["Nebula", "Starship", "Orbit", "Comet", "Galaxy", "Voyager", "Eclipse", "Pulsar"],
    "Cozy Mystery": ["Teacup", "Cottage", "Alibi", "Vicarage", "Clue", "Garden Party", "Locket", "Inn"],
    "Sourdough Baking": ["Loaf", "Crust", "Starter", "Crumb", "Rye", "Boule", "Oven", "Levain"],
    "Jazz Piano": ["Ballad", "Blue Note", "Swing", "Nocturne", "Stride", "Bebop", "Chord", "Trio"],
    "Trail Running": ["Ridge", "Summit", "Switchback", "Canyon", "Trailhead", "Pine Path", "Ascent", "Creek"],
    "Urban Gardening": ["Balcony", "Seedling", "Trellis", "Compost", "Herb Box", "Sprout", "Planter", "Terrace"],
    "Medieval History": ["Castle", "Crusade", "Manor", "Chronicle", "Knight", "Abbey", "Siege", "Crown"],
    "Deep Sea Biology": ["Abyss", "Reef", "Trench", "Octopus", "Current", "Lantern Fish", "Kelp", "Tide"],
    "Strategy Board Games": ["Gambit", "Meeple", "Endgame", "Opening", "Tile", "Dice Tower", "Checkmate", "Token"],
    "Film Noir": ["Shadow", "Rain", "Detective", "Neon", "Cigarette", "Alley", "Femme Fatale", "Nightclub"],
    "Vegan Cooking": ["Lentil", "Chickpea", "Tofu", "Harvest Bowl", "Tahini", "Greens", "Jackfruit", "Miso"],
    "Astronomy Guides": ["Telescope", "Star Chart", "Meteor", "Planet", "Moonrise", "Constellation", "Aurora", "Sky Atlas"],
    "Woodworking": ["Dovetail", "Workbench", "Chisel", "Oak", "Joinery", "Lathe", "Plane", "Walnut"],
    "Fantasy Epic": ["Dragon", "Sword", "Prophecy", "Realm", "Wizard", "Throne", "Elven Song", "Quest"],
    "Classical Opera": ["Aria", "Overture", "Libretto", "Soprano", "Finale", "Prelude", "Duet", "Encore"],
    "Mountain Photography": ["Alpenglow", "Peak", "Glacier", "Valley", "Lens", "Horizon", "Snowfield", "Fog"],
    "Personal Finance": ["Budget", "Ledger", "Savings", "Index Fund", "Pension", "Dividend", "Mortgage", "Nest Egg"],
    "Retro Video Games": ["Pixel", "Cartridge", "Arcade", "Joystick", "High Score", "Sprite", "Console", "Level"],
    "Birdwatching": ["Warbler", "Heron", "Binoculars", "Migration", "Nest", "Owl", "Kestrel", "Songbird"],
    "Yoga Practice": ["Asana", "Breath", "Mat", "Lotus", "Flow", "Balance", "Sun Salute", "Stillness"],
    "Cyberpunk Thriller": ["Neon Grid", "Implant", "Hacker", "Megacity", "Datastream", "Chrome", "Firewall", "Synth"],
    "Italian Cuisine": ["Risotto", "Pasta", "Espresso", "Trattoria", "Pesto", "Gnocchi", "Focaccia", "Tiramisu"],
    "Ocean Sailing": ["Mainsail", "Harbor", "Compass", "Regatta", "Anchor", "Trade Wind", "Keel", "Lighthouse"],
    "Ancient Philosophy": ["Stoa", "Dialogue", "Virtue", "Logos", "Academy", "Paradox", "Oracle", "Agora"],
}
ADJECTIVES = ["Silent", "Golden", "Hidden", "Last", "Little", "Wild", "Crimson", "Quiet", "Endless", "Bright",
              "Forgotten", "Northern", "Secret", "Broken", "Gentle", "Midnight", "Lost", "Brave", "Distant", "Hollow"]
FORMS = ["{a} {n}", "The {a} {n}", "{n} of the {a} Hour", "A {a} {n}", "{a} {n} Stories", "The {n} Handbook"]


def _titles(topic_of: np.ndarray, names: list[str], rng: np.random.Generator) -> list[str]:
    titles, seen = [], set()
    for t in topic_of:
        nouns = TOPICS[names[t]]
        title = rng.choice(FORMS).format(a=rng.choice(ADJECTIVES), n=rng.choice(nouns))
        base, k = title, 2
        while title in seen:  # unique titles keep item prompts distinguishable
            title, k = f"{base}, Vol. {k}", k + 1
        seen.add(title)
        titles.append(title)
    return titles


def generate(cfg: SyntheticParams, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    names = list(TOPICS)[: cfg.num_topics]
    n_items, n_topics = cfg.num_items, cfg.num_topics

    topic_of = np.arange(n_items) % n_topics  # [N]
    level = np.arange(n_items) // n_topics  # position of the item inside its topic
    per_topic = np.bincount(topic_of, minlength=n_topics)

    # Each topic leads mostly to one fixed next topic (a random cycle) and sometimes to another.
    order = rng.permutation(n_topics)
    next_topic = np.empty(n_topics, dtype=int)
    next_topic[order] = np.roll(order, -1)
    alt_topic = rng.integers(0, n_topics, n_topics)

    # Successors: items of the next topic at the same or nearby level.
    succ = np.empty((n_items, cfg.successors), dtype=np.int64)
    for j in range(cfg.successors):
        tgt = np.where(j == cfg.successors - 1, alt_topic[topic_of], next_topic[topic_of])
        lvl = (level + j) % per_topic[tgt]
        succ[:, j] = lvl * n_topics + tgt
    succ_p = np.array([0.5, 0.3, 0.2][: cfg.successors] + [0.0] * max(0, cfg.successors - 3))
    succ_p = succ_p / succ_p.sum() if succ_p.sum() > 0 else np.full(cfg.successors, 1 / cfg.successors)

    pop = 1.0 / (rng.permutation(n_items) + 1.0) ** cfg.popularity_skew
    pop /= pop.sum()

    lengths = np.clip(
        cfg.min_length + rng.geometric(1.0 / max(1.0, cfg.mean_length - cfg.min_length + 1), cfg.num_users) - 1,
        cfg.min_length, cfg.max_length,
    )
    max_len = int(lengths.max())
    seq = np.empty((cfg.num_users, max_len), dtype=np.int64)  # [U, Lmax]
    seq[:, 0] = rng.choice(n_items, cfg.num_users, p=pop)
    for t in range(1, max_len):  # vectorised over users; Python loop only over positions
        follow = rng.random(cfg.num_users) < cfg.follow_prob
        pick = succ[seq[:, t - 1], rng.choice(cfg.successors, cfg.num_users, p=succ_p)]
        jump = rng.choice(n_items, cfg.num_users, p=pop)
        seq[:, t] = np.where(follow, pick, jump)

    start = pd.Timestamp(cfg.start_date, tz="UTC").timestamp()
    first = start + rng.uniform(0, cfg.span_days * 0.5 * 86400, cfg.num_users)
    # Gaps: mostly hours to a few days, occasionally weeks; always at least a minute.
    gaps = np.maximum(60.0, rng.lognormal(mean=np.log(20 * 3600), sigma=1.3, size=(cfg.num_users, max_len)))
    gaps[:, 0] = 0
    times = (first[:, None] + np.cumsum(gaps, axis=1)).astype(np.int64)  # [U, Lmax]

    mask = np.arange(max_len)[None, :] < lengths[:, None]
    users = np.repeat(np.arange(cfg.num_users), lengths)
    inter = pd.DataFrame({"u": users, "i": seq[mask], "t": times[mask]})
    # Like MovieLens, a user consumes an item once: later repeats (about 4%) are dropped.
    inter = inter[~inter.duplicated(["u", "i"], keep="first")]
    inter = pd.DataFrame({
        "user_id": [f"U{u:06d}" for u in inter["u"]],
        "item_id": [f"I{i:05d}" for i in inter["i"]],
        "timestamp": inter["t"].astype(str).to_numpy(),
    })
    items = pd.DataFrame({
        "item_id": [f"I{i:05d}" for i in range(n_items)],
        "title": _titles(topic_of, names, rng),
        "description": [f"A {names[t].lower()} title." for t in topic_of],
    })
    return canonical_interactions(inter, "synthetic"), canonical_items(items, "synthetic")
