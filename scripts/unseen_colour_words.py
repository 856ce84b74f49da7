"""How well can a frozen text encoder read the unseen colour words of chapter 06, however it is read?

Every way tried here classifies the 24 unseen colour words (``wordings.UNSEEN_COLOURS``: vermilion,
cranberry, periwinkle, ...) into the six Shapes colours, from the encoder's pooled vector of the
word in a few sentence templates:

* zero-shot: the nearest of the six basic colour words (cosine), and the nearest mean of the seen
  colour names of each colour;
* a linear head trained on seen colour names: all of them, only those without the basic colour word
  ("dark red" is out), the hand-written core names, and object words with a known colour;
* the chapter's colour probe (an RGB head trained on the XKCD and CSS4 names, unseen words
  excluded), its predicted colour read as the nearest Shapes hue.

Run: ``python scripts/unseen_colour_words.py mpnet minilm`` (about 4 minutes on 2 CPU cores).
"""
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib import colours
from course_lib.data import colour_names, wordings
from course_lib.text_encoders import text_encoder

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
TEMPLATES = ["{}", "the colour {}", "a {} circle"]
#: Things with a colour people know (none of them an unseen word).
OBJECTS = {
    "red": ["cherry", "ruby", "tomato", "strawberry", "blood", "fire engine", "poppy", "lipstick",
            "ketchup", "chili", "garnet", "raspberry", "lobster", "fire truck", "stop sign"],
    "green": ["emerald", "jade", "grass", "lime", "leaf", "forest", "moss", "pine", "pea", "basil",
              "frog", "cucumber", "avocado", "spinach", "lettuce", "kiwi", "broccoli"],
    "blue": ["navy", "cobalt", "azure", "sky", "ocean", "sea", "denim", "royal blue", "cerulean",
             "ultramarine", "blueberry", "blue jeans", "bluebird"],
    "yellow": ["lemon", "canary", "gold", "sunflower", "corn", "dandelion", "sunshine", "saffron",
               "egg yolk", "school bus", "maize", "sun", "pineapple"],
    "purple": ["violet", "plum", "amethyst", "lavender", "lilac", "mulberry", "aubergine", "heather",
               "iris", "indigo", "royal purple", "beetroot", "blackberry"],
    "orange": ["tangerine", "apricot", "pumpkin", "carrot", "mandarin", "peach", "amber", "marigold",
               "cantaloupe", "sunset", "flame", "goldfish", "tiger", "fox", "traffic cone"]}


def main(kinds):
    unseen = [(w, c) for c, ws in wordings.UNSEEN_COLOURS.items() for w in ws]
    words = [w for w, _ in unseen]
    y = torch.tensor([COLOURS.index(c) for _, c in unseen])                # [24]
    seen = wordings.WORDS["seen"]["color"]
    for kind in kinds:
        enc = text_encoder(kind)

        def vectors(texts, template):                                        # [n, d], unit length
            return F.normalize(enc.encode([template.format(t) for t in texts]).pooled.float(), dim=1)

        for template in TEMPLATES:
            u = vectors(words, template)

            def head(sets):
                x = torch.cat([vectors(v, template) for v in sets])
                labels = torch.cat([torch.full((len(v),), i) for i, v in enumerate(sets)])
                weight = (1 / torch.bincount(labels).float())[labels]
                weight = weight / weight.mean()                              # every colour weighs the same
                torch.manual_seed(0)
                lin = nn.Linear(x.shape[1], len(COLOURS))
                opt = torch.optim.AdamW(lin.parameters(), 1e-2, weight_decay=1e-3)
                for _ in range(300):
                    loss = (F.cross_entropy(lin(10 * x), labels, reduction="none") * weight).mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                return (lin(10 * u).argmax(1) == y).float().mean().item()

            basic = (u @ vectors(COLOURS, template).T).argmax(1)
            protos = F.normalize(torch.stack([vectors(seen[c], template).mean(0) for c in COLOURS]), dim=1)
            nearest_mean = (u @ protos.T).argmax(1)
            rows = {"zero-shot basic word": (basic == y).float().mean().item(),
                    "zero-shot seen mean": (nearest_mean == y).float().mean().item(),
                    "head, all seen names": head([seen[c] for c in COLOURS]),
                    "head, no basic word": head([[n for n in seen[c] if c not in n] for c in COLOURS]),
                    "head, core names": head([wordings.SEEN_CORE_COLOURS[c] for c in COLOURS]),
                    "head, objects": head([OBJECTS[c] for c in COLOURS]),
                    "head, objects + all": head([OBJECTS[c] + seen[c] for c in COLOURS])}
            print(f"{kind} {template!r:16} " + ", ".join(f"{k} {v:.2f}" for k, v in rows.items()), flush=True)
        names = [(n, rgb) for n, rgb in colours.colour_names()
                 if not any(x in w for w in colour_names.name_words(n) for x in wordings._UNSEEN_EXCLUDE)]
        x = enc.encode([n for n, _ in names]).pooled.float()
        rgb = torch.tensor(np.array([c for _, c in names]), dtype=torch.float32)
        probe = colours.fit_colour_head(x, rgb, steps=600)
        with torch.no_grad():
            predicted = probe(enc.encode(words).pooled.float()).numpy()      # [24, 3]
        _, _, hues = colours.lch(colours.shapes_palette()[1])
        _, _, h = colours.lch(predicted)
        hue = np.abs((h[:, None] - hues[None] + 180) % 360 - 180).argmin(1)
        print(f"{kind} colour probe on {len(names)} names, nearest Shapes hue: "
              f"{np.mean(hue == y.numpy()):.2f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["mpnet", "minilm"])
