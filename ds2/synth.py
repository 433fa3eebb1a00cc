"""A speech corpus synthesized with eSpeak NG: no downloads, reproducible from a seed.

Sentences come from a small English grammar written here (about 300 nouns, verbs and
adjectives, ~900 word forms with inflections and numbers spelled out; statements,
questions, contractions), so that an n-gram LM built on the training text learns
something real. Each sentence is spoken by an eSpeak NG voice (an English accent
plus a voice variant, e.g. ``"en-us+m3"``) at a random speaking rate and pitch.

Dev and test hold sentences *and* voices never seen in training: the voices are split
into two disjoint groups (:data:`ENGLISH_VOICES`), and the dev/test sentences are drawn
first and excluded from the training sentences.

Usage::

    from ds2.synth import SynthConfig, synthesize_corpus
    manifests = synthesize_corpus("data/synth", SynthConfig(n_train=2000, seed=0))
    # {"train": Path("data/synth/train.json"), "dev": ..., "test": ...}

eSpeak NG comes from the ``espeakng-loader`` wheel (the shared library and its data) and
is driven through ctypes; its API is declared in espeak-ng's ``speak_lib.h``.
"""

from __future__ import annotations

import _ctypes
import contextlib
import ctypes
import multiprocessing
import os
import random
import shutil
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
from tqdm import tqdm

from ds2 import audio
from ds2.data import write_manifest

SPLITS = ("train", "dev", "test")
RATE_RANGE = (130, 210)  # speaking rate, words per minute (eSpeak's default is 175)
PITCH_RANGE = (30, 70)  # eSpeak base pitch, 0-100 (50 is the voice's own pitch)
# eSpeak's volume, 0-200 (100 = its default). Some accent/variant/pitch combinations clip
# at 100; at 75 none of the voices below reaches full scale.
VOLUME = 75
INT16_SCALE = 32768.0  # eSpeak returns signed 16-bit samples
MAX_WORKERS = 8  # default cap on synthesis processes


@dataclass(frozen=True)
class VoicePartition:
    """eSpeak voice names for training and for dev/test (never seen in training).

    A name is ``<language>[+<variant>]``: the language picks the accent (its
    pronunciation rules), the variant (espeak-ng-data/voices/!v) the speaker's formants,
    pitch range and voice quality. A name written as a bare ``+<variant>`` takes
    :attr:`SynthConfig.language` as its language.
    """

    train: tuple[str, ...]
    heldout: tuple[str, ...]


# Variants were chosen by measurement: a periodicity (voicing) check dropped the whispered
# and breathy ones (whisper, whisperf, caleb, croak, klatt, klatt2, grandpa), and the
# robotic/echo ones (robosoft*, RicishayMax*, UniRobot, Demonic, announcer, Marco) and
# those that reach full scale at eSpeak's default volume (iven, paul, antonio, Jacky,
# steph2/3, ...) were left out. test_synth checks the voicing and length of every voice.
# Held-out variants appear in no training voice, under any accent; the accents are shared
# so that dev/test measure generalization to new speakers, not to a new dialect.
ENGLISH_VOICES = VoicePartition(
    train=(
        "en-us",  # the accent's own default voice (no variant)
        "+m1",
        "+m3",
        "+m6",
        "+f1",
        "+f4",
        "+adam",
        "+steph",
        "en+m4",
        "en+f2",
        "en+robert",
        "en-gb-x-rp+m7",
        "en-gb-x-rp+linda",
        "en-gb-scotland+david",
        "en-029+max",
        "en-us-nyc+Annie",
    ),
    heldout=("+m5", "+f3", "en+m2", "en-gb-x-rp+f5"),
)


@dataclass(frozen=True)
class SynthConfig:
    """What :func:`synthesize_corpus` makes; the same config gives the same bytes."""

    n_train: int = 2000  # utterances per split
    n_dev: int = 200
    n_test: int = 200
    seed: int = 0
    language: str = "en-us"  # eSpeak language for voices written as a bare "+variant"
    min_words: int = 3  # sentence length bounds, in words
    max_words: int = 12
    rate_range: tuple[int, int] = RATE_RANGE  # words per minute, drawn per utterance
    pitch_range: tuple[int, int] = PITCH_RANGE  # 0-100, drawn per utterance
    train_voices: tuple[str, ...] = ENGLISH_VOICES.train
    heldout_voices: tuple[str, ...] = ENGLISH_VOICES.heldout  # dev and test share these

    def __post_init__(self):
        if min(self.n_train, self.n_dev, self.n_test) < 0:
            raise ValueError("utterance counts must be >= 0")
        _check_word_range(self.min_words, self.max_words)
        for name, (low, high), (lowest, highest) in (
            ("rate_range", self.rate_range, (80, 450)),  # espeakRATE_MINIMUM/MAXIMUM
            ("pitch_range", self.pitch_range, (0, 100)),
        ):
            if not lowest <= low <= high <= highest:
                raise ValueError(f"{name} must satisfy {lowest} <= low <= high <= {highest}")
        if not self.train_voices or not self.heldout_voices:
            raise ValueError("train_voices and heldout_voices must not be empty")
        shared = {_variant(v) for v in self.resolved_voices("train")} & {
            _variant(v) for v in self.resolved_voices("dev")
        }
        if shared:
            raise ValueError(f"voice variants in both train and held-out voices: {sorted(shared)}")

    def resolved_voices(self, split: str) -> tuple[str, ...]:
        """Full eSpeak voice names for a split ("+m3" -> "en-us+m3")."""
        voices = self.train_voices if split == "train" else self.heldout_voices
        return tuple(self.language + v if v.startswith("+") else v for v in voices)

    def n_utterances(self, split: str) -> int:
        return {"train": self.n_train, "dev": self.n_dev, "test": self.n_test}[split]


def _variant(voice: str) -> str:
    """The variant part of a voice name ("" for an accent's default voice)."""
    return voice.partition("+")[2]


# --------------------------------------------------------------------------- sentences
#
# Word lists, written as "singular plural" / "base third-person past -ing" so that
# agreement is looked up, never guessed. Nouns are grouped by what they can do or have
# done to them, so that "the farmer fed the goats" comes out but "the bridge ate a cup"
# does not.


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _pairs(text: str) -> tuple[tuple[str, ...], ...]:
    """ "dog dogs, child children" -> (("dog", "dogs"), ("child", "children"))."""
    return tuple(tuple(item.split()) for item in text.split(","))


def _verbs(text: str, objects: str) -> tuple[tuple[tuple[str, ...], str], ...]:
    """ "see sees saw seeing, ..." -> ((forms, object classes), ...)."""
    return tuple((forms, objects) for forms in _pairs(text))


PEOPLE = _pairs(
    "man men, woman women, child children, boy boys, girl girls, baby babies, teacher teachers,"
    "doctor doctors, farmer farmers, driver drivers, student students, friend friends,"
    "neighbor neighbors, king kings, queen queens, soldier soldiers, sailor sailors,"
    "pilot pilots, artist artists, cook cooks, nurse nurses, singer singers, writer writers,"
    "baker bakers, fisherman fishermen, hunter hunters, stranger strangers, visitor visitors,"
    "brother brothers, sister sisters, mother mothers, father fathers, uncle uncles,"
    "aunt aunts, cousin cousins, grandmother grandmothers, grandfather grandfathers,"
    "player players, worker workers, captain captains, prince princes, princess princesses,"
    "judge judges, waiter waiters, manager managers, engineer engineers, scientist scientists,"
    "musician musicians, dancer dancers, guard guards, lawyer lawyers"
)
ANIMALS = _pairs(
    "dog dogs, cat cats, horse horses, cow cows, pig pigs, sheep sheep, goat goats, bird birds,"
    "duck ducks, chicken chickens, rabbit rabbits, mouse mice, fox foxes, wolf wolves, bear bears,"
    "lion lions, tiger tigers, monkey monkeys, elephant elephants, frog frogs, fish fish,"
    "snake snakes, owl owls, deer deer, puppy puppies, kitten kittens"
)
THINGS = _pairs(
    "book books, letter letters, box boxes, bag bags, cup cups, key keys, lamp lamps,"
    "clock clocks, bottle bottles, basket baskets, ball balls, hat hats, coat coats, shoe shoes,"
    "shirt shirts, jacket jackets, phone phones, picture pictures, map maps, ticket tickets,"
    "chair chairs, knife knives, spoon spoons, plate plates, glass glasses, umbrella umbrellas,"
    "radio radios, camera cameras, blanket blankets, pencil pencils, pen pens,"
    "newspaper newspapers, kite kites, candle candles, mirror mirrors, rope ropes,"
    "hammer hammers, wallet wallets, ring rings, watch watches, guitar guitars, drum drums,"
    "toy toys, bucket buckets, envelope envelopes, present presents, suitcase suitcases"
)
FOOD = _pairs(
    "apple apples, orange oranges, banana bananas, cake cakes, pie pies, sandwich sandwiches,"
    "egg eggs, potato potatoes, tomato tomatoes, carrot carrots, cookie cookies, lemon lemons,"
    "peach peaches, cherry cherries, onion onions, pear pears, plum plums, melon melons"
)
VEHICLES = _pairs(
    "car cars, bus buses, truck trucks, boat boats, train trains, tractor tractors, van vans,"
    "bicycle bicycles, taxi taxis, ship ships"
)
PLACES = _pairs(
    "kitchen kitchens, garden gardens, house houses, school schools, market markets,"
    "station stations, library libraries, river rivers, forest forests, park parks,"
    "church churches, hospital hospitals, office offices, village villages, city cities,"
    "farm farms, beach beaches, hill hills, lake lakes, bridge bridges, road roads,"
    "field fields, shop shops, hotel hotels, restaurant restaurants, museum museums,"
    "airport airports, harbor harbors, castle castles, island islands, barn barns,"
    "bakery bakeries, theater theaters, factory factories, cottage cottages"
)
FURNITURE = _pairs(
    "table tables, bed beds, shelf shelves, desk desks, sofa sofas, bench benches,"
    "window windows, door doors, stairs stairs, counter counters"
)
READABLES = _pairs("book books, letter letters, newspaper newspapers, map maps, story stories, poem poems")

NAMES = _words(
    "john mary peter susan david anna james linda robert emma thomas sarah michael laura george "
    "helen paul alice frank ruth henry grace oliver lucy daniel kate simon jane martin rose"
)
DAYS = _words("monday tuesday wednesday thursday friday saturday sunday")

ADJ_PEOPLE = _words(
    "old young tall short happy sad angry tired hungry busy lazy clever brave kind gentle "
    "friendly quiet noisy lucky famous poor rich strange polite nervous proud little"
)
ADJ_ANIMALS = ADJ_PEOPLE[:20]  # old ... famous: what fits a dog as well as a person
ADJ_THINGS = _words(
    "big small old new red blue green yellow white black brown heavy light warm cold clean "
    "dirty empty full soft round wooden broken shiny dark long cheap expensive beautiful "
    "strange little orange"
)
ADJ_FOOD = _words("fresh sweet ripe sour big small red green yellow warm cold delicious")
ADJ_PLACES = _words("old new big small quiet busy dark empty famous beautiful little")
ADVERBS = _words(
    "quickly slowly quietly carefully suddenly happily loudly gently finally easily eagerly "
    "politely nervously proudly calmly again"
)
FREQUENCY = _words("often always never sometimes usually rarely")  # go before the verb

# Where a verb can take its object from: P people, A animals, T things, F food,
# V vehicles, L places, R readables.
TRANSITIVE = (
    _verbs("see sees saw seeing, like likes liked liking, find finds found finding", "PATFVL")
    + _verbs("take takes took taking, buy buys bought buying, sell sells sold selling", "TFV")
    + _verbs("carry carries carried carrying, bring brings brought bringing", "TF")
    + _verbs("drop drops dropped dropping, throw throws threw throwing", "TF")
    + _verbs("want wants wanted wanting, hide hides hid hiding", "TF")
    + _verbs("wash washes washed washing", "TFVA")
    + _verbs("open opens opened opening, hold holds held holding, need needs needed needing", "T")
    + _verbs("lift lifts lifted lifting, fix fixes fixed fixing, lose loses lost losing", "T")
    + _verbs("push pushes pushed pushing, pull pulls pulled pulling", "TV")
    + _verbs("paint paints painted painting, clean cleans cleaned cleaning", "TVL")
    + _verbs("eat eats ate eating, cook cooks cooked cooking", "F")
    + _verbs("watch watches watched watching, follow follows followed following", "PA")
    + _verbs("chase chases chased chasing, feed feeds fed feeding", "A")
    + _verbs("meet meets met meeting, help helps helped helping, call calls called calling", "P")
    + _verbs("visit visits visited visiting", "PL")
    + _verbs("leave leaves left leaving", "TL")
    + _verbs("drive drives drove driving, park parks parked parking", "V")
    + _verbs("read reads read reading, write writes wrote writing", "R")
)
ANIMAL_VERBS = tuple(
    (forms, classes.replace("P", "").replace("V", "").replace("L", "") or "A")
    for forms, classes in TRANSITIVE
    if forms[0] in _words("see like find carry drop hide want watch follow chase eat")
)  # what an animal subject may do, to animals, things and food only
INTRANSITIVE = _pairs(
    "sleep sleeps slept sleeping, run runs ran running, walk walks walked walking,"
    "laugh laughs laughed laughing, smile smiles smiled smiling, sing sings sang singing,"
    "dance dances danced dancing, wait waits waited waiting, jump jumps jumped jumping,"
    "swim swims swam swimming, cry cries cried crying, arrive arrives arrived arriving,"
    "stay stays stayed staying, sit sits sat sitting, stand stands stood standing,"
    "fall falls fell falling, shout shouts shouted shouting, rest rests rested resting,"
    "work works worked working, travel travels traveled traveling, play plays played playing"
)
# Verbs with two objects: "the teacher gave the boy three apples".
DITRANSITIVE = _pairs(
    "give gives gave giving, send sends sent sending, show shows showed showing,"
    "hand hands handed handing, offer offers offered offering, lend lends lent lending,"
    "bring brings brought bringing, sell sells sold selling"
)
LOCATION_PREPS = _words("near behind beside outside inside at by")
FURNITURE_PREPS = ("on", "under", "behind", "beside", "next to", "near")
CONJUNCTIONS = _words("and but because while when after before so")
TIMES = {  # tense -> time expressions that fit it
    "past": ("yesterday", "last night", "last week", "this morning", "in the morning", "at night",
             "after lunch", "before dinner", "on {day}", "at {hour} o'clock", "last {day}"),
    "present": ("every day", "every morning", "at night", "in the evening", "after lunch",
                "on {day}s", "every {day}", "at {hour} o'clock"),
    "future": ("tomorrow", "next week", "tonight", "on {day}", "next {day}", "after lunch",
               "at {hour} o'clock", "in the afternoon"),
}
MODALS = _words("can could should must might would")

_ONES = _words(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
)
_TENS = _words("_ _ twenty thirty forty fifty sixty seventy eighty ninety")
_VOWEL_SOUND = tuple("aeiou")
_CONSONANT_SOUND_EXCEPTIONS = ("one", "uni", "use")  # "a one", "a uniform"


def number_words(n: int) -> str:
    """0..999 spelled out the way it is said: 342 -> "three hundred and forty two"."""
    if not 0 <= n <= 999:
        raise ValueError(f"number_words covers 0..999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    rest = n % 100
    return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))


def _article(next_word: str) -> str:
    if next_word.startswith(_VOWEL_SOUND) and not next_word.startswith(_CONSONANT_SOUND_EXCEPTIONS):
        return "an"
    return "a"


def _count(rng: random.Random) -> int:
    """How many of something: mostly small numbers, sometimes large ones."""
    roll = rng.random()
    if roll < 0.7:
        return rng.randint(2, 20)
    if roll < 0.95:
        return rng.randint(21, 99)
    return rng.randint(100, 999)


@dataclass(frozen=True)
class _Phrase:
    """A noun phrase and what verb agreement it needs."""

    words: str
    person: str  # "1sg", "2", "3sg", "pl"
    animal: bool = False  # animals get only the verbs in ANIMAL_VERBS


_PRONOUNS = (("i", "1sg"), ("you", "2"), ("he", "3sg"), ("she", "3sg"), ("we", "pl"), ("they", "pl"))
_OBJECT_PRONOUNS = ("me", "you", "him", "her", "us", "them", "it")


def _noun_phrase(rng: random.Random, nouns, adjectives, allow_count: bool = True) -> _Phrase:
    """A determiner, maybe an adjective, a noun: "the old farmer", "seven red apples"."""
    singular, plural = rng.choice(nouns)
    adjective = rng.choice(adjectives) + " " if rng.random() < 0.45 else ""
    roll = rng.random()
    if roll < 0.1 and allow_count:
        return _Phrase(f"{number_words(_count(rng))} {adjective}{plural}", "pl")
    if roll < 0.3:
        determiner = rng.choice(("the", "these", "those", "some", "my", "our", "their"))
        return _Phrase(f"{determiner} {adjective}{plural}", "pl")
    if roll < 0.4:
        return _Phrase(f"{rng.choice(NAMES)}'s {adjective}{singular}", "3sg")
    if roll < 0.6:
        head = (adjective + singular).split()[0]
        return _Phrase(f"{_article(head)} {adjective}{singular}", "3sg")
    determiner = rng.choice(("the", "the", "the", "this", "that", "my", "your", "his", "her", "every"))
    return _Phrase(f"{determiner} {adjective}{singular}", "3sg")


def _subject(rng: random.Random, animals: bool = True) -> _Phrase:
    roll = rng.random()
    if roll < 0.2:
        return _Phrase(*rng.choice(_PRONOUNS))
    if roll < 0.35:
        return _Phrase(rng.choice(NAMES), "3sg")
    if animals and roll < 0.5:
        phrase = _noun_phrase(rng, ANIMALS, ADJ_ANIMALS)
        return _Phrase(phrase.words, phrase.person, animal=True)
    return _noun_phrase(rng, PEOPLE, ADJ_PEOPLE)


_OBJECT_NOUNS = {
    "P": (PEOPLE, ADJ_PEOPLE),
    "A": (ANIMALS, ADJ_ANIMALS),
    "T": (THINGS, ADJ_THINGS),
    "F": (FOOD, ADJ_FOOD),
    "V": (VEHICLES, ADJ_THINGS),
    "L": (PLACES, ADJ_PLACES),
    "R": (READABLES, ADJ_THINGS[:20]),
}


def _object(rng: random.Random, classes: str) -> str:
    if "P" in classes and rng.random() < 0.15:
        return rng.choice(_OBJECT_PRONOUNS + tuple(NAMES))
    nouns, adjectives = _OBJECT_NOUNS[rng.choice(classes)]
    return _noun_phrase(rng, nouns, adjectives).words


def _place(rng: random.Random) -> str:
    """A prepositional phrase of place: "near the old bridge", "under the table"."""
    if rng.random() < 0.3:
        noun = rng.choice(FURNITURE)[0]
        return f"{rng.choice(FURNITURE_PREPS)} the {noun}"
    noun = rng.choice(PLACES)[0]
    adjective = rng.choice(ADJ_PLACES) + " " if rng.random() < 0.3 else ""
    preposition = rng.choice(LOCATION_PREPS + ("in", "in", "to"))
    return f"{preposition} the {adjective}{noun}"


def _optional(rng: random.Random, probability: float, make) -> str:
    """ " " + make() with the given probability, else ""."""
    return " " + make() if rng.random() < probability else ""


def _time(rng: random.Random, tense: str) -> str:
    return rng.choice(TIMES[tense]).format(day=rng.choice(DAYS), hour=number_words(rng.randint(1, 12)))


def _be(person: str, tense: str, negative: bool = False) -> str:
    if tense == "past":
        form = "was" if person in ("1sg", "3sg") else "were"
    else:
        form = {"1sg": "am", "3sg": "is"}.get(person, "are")
    if negative:
        return "am not" if form == "am" else form + "n't"
    return form


def _verb_phrase(rng: random.Random, subject: _Phrase, tense: str) -> str:
    """Verb (with tense, agreement, maybe a modal or negation) plus its objects."""
    kind = rng.random()
    if kind < 0.55:
        forms, classes = rng.choice(ANIMAL_VERBS if subject.animal else TRANSITIVE)
        complement = _object(rng, classes)
    elif kind < 0.8 or subject.animal:
        forms, complement = rng.choice(INTRANSITIVE), ""
    else:
        forms = rng.choice(DITRANSITIVE)
        recipient = _object(rng, "P")
        complement = f"{recipient} {_object(rng, 'TF')}"
    base, third, past, progressive = forms
    style = rng.random()
    if tense == "future":
        auxiliary = rng.choice(("will", "won't", f"{_be(subject.person, 'present')} going to"))
        verb = f"{auxiliary} {base}"
    elif style < 0.12:
        verb = f"{_be(subject.person, tense)} {progressive}"
    elif style < 0.22:
        verb = f"{rng.choice(MODALS)} {base}"
    elif style < 0.32:
        if tense == "past":
            verb = f"didn't {base}"
        else:
            verb = ("doesn't " if subject.person == "3sg" else "don't ") + base
    else:
        verb = past if tense == "past" else (third if subject.person == "3sg" else base)
        if rng.random() < 0.15:
            verb = f"{rng.choice(FREQUENCY)} {verb}"
    words = [verb, complement] if complement else [verb]
    if rng.random() < 0.4:
        words.append(_place(rng))
    if rng.random() < 0.2:
        words.append(rng.choice(ADVERBS))
    if rng.random() < 0.25:
        words.append(_time(rng, tense))
    return " ".join(words)


def _clause(rng: random.Random) -> str:
    subject = _subject(rng)
    tense = rng.choices(("past", "present", "future"), weights=(5, 3, 2))[0]
    return f"{subject.words} {_verb_phrase(rng, subject, tense)}"


def _question(rng: random.Random) -> str:
    subject = _subject(rng)
    forms, classes = rng.choice(ANIMAL_VERBS if subject.animal else TRANSITIVE)
    base = forms[0]
    kind = rng.randrange(7)
    if kind == 0:
        auxiliary = rng.choice(("did", "will", "can", "should", "could"))
        tail = _optional(rng, 0.4, lambda: _place(rng))
        return f"{auxiliary} {subject.words} {base} {_object(rng, classes)}{tail}"
    if kind == 1:
        wh = rng.choice(("where", "why", "when", "how"))
        auxiliary = rng.choice(("did", "will", "can", "would"))
        return f"{wh} {auxiliary} {subject.words} {base} {_object(rng, classes)}"
    if kind == 2:
        _, plural = rng.choice(_OBJECT_NOUNS[classes[0]][0])
        return f"how many {plural} did {subject.words} {base}"
    if kind == 3:
        return f"what did {subject.words} {base}" + _optional(rng, 0.5, lambda: _place(rng))
    if kind == 4:
        return f"who {forms[2]} {_object(rng, classes)}" + _optional(rng, 0.4, lambda: _time(rng, "past"))
    if kind == 5:
        tense = rng.choice(("past", "present"))
        be = _be(subject.person, tense)
        return f"{be} {subject.words} {rng.choice(ADJ_PEOPLE)}" + _optional(rng, 0.4, lambda: _place(rng))
    thing = _noun_phrase(rng, THINGS, ADJ_THINGS, allow_count=False)
    return f"where {_be(thing.person, 'present')} {thing.words}"


def _statement(rng: random.Random) -> str:
    """Copular and other fixed patterns: ages, prices, counts, imperatives."""
    kind = rng.randrange(7)
    if kind == 0:
        subject = _subject(rng, animals=False)
        tense = rng.choice(("past", "present"))
        negative = rng.random() < 0.2
        return f"{subject.words} {_be(subject.person, tense, negative)} {rng.choice(ADJ_PEOPLE)}"
    if kind == 1:
        subject = _subject(rng, animals=False)
        tense = rng.choice(("past", "present"))
        age = number_words(rng.randint(2, 99))
        return f"{subject.words} {_be(subject.person, tense)} {age} years old"
    if kind == 2:
        thing = _noun_phrase(rng, THINGS + FOOD, ADJ_THINGS, allow_count=False)
        verb = rng.choice(("cost", "costs" if thing.person == "3sg" else "cost"))  # past or present
        return f"{thing.words} {verb} {number_words(_count(rng))} dollars"
    if kind == 3:
        nouns = rng.choice((PEOPLE, ANIMALS, THINGS, FOOD, VEHICLES))
        count = number_words(_count(rng))
        return f"there {rng.choice(('were', 'are'))} {count} {rng.choice(nouns)[1]} {_place(rng)}"
    if kind == 4:
        forms, classes = rng.choice(TRANSITIVE)
        opening = rng.choice(("please ", "don't ", "let's ", ""))
        tail = _optional(rng, 0.5, lambda: _place(rng))
        return f"{opening}{forms[0]} {_object(rng, classes)}{tail}"
    if kind == 5:
        state = rng.choice(ADJ_PLACES + ("cold", "warm", "late", "early", "raining", "snowing"))
        tail = _optional(rng, 0.5, lambda: _place(rng))
        verb = rng.choice(("was", "is", "wasn't", "isn't"))
        return f"it {verb} {state}{tail}"
    pronoun = rng.choice(("i'm", "we're", "they're", "you're", "he's", "she's", "it's"))
    return f"{pronoun} {rng.choice(ADJ_PEOPLE)}" + _optional(rng, 0.3, lambda: _time(rng, "present"))


def _sentence(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.45:
        return _clause(rng)
    if roll < 0.6:
        return f"{_clause(rng)} {rng.choice(CONJUNCTIONS)} {_clause(rng)}"
    if roll < 0.8:
        return _question(rng)
    return _statement(rng)


def _check_word_range(min_words: int, max_words: int) -> None:
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")


def generate_sentences(
    n: int,
    rng: random.Random,
    min_words: int,
    max_words: int,
    exclude: set[str] | frozenset[str] = frozenset(),
) -> list[str]:
    """``n`` distinct sentences from the built-in English grammar.

    Parameters
    ----------
    n: how many sentences.
    rng: the only source of randomness; the same state gives the same sentences.
    min_words, max_words: inclusive bounds on the number of words.
    exclude: sentences that must not be produced (e.g. the dev/test sentences when
        drawing the training ones).

    Returns
    -------
    list[str], already normalized: lower case a-z, space and apostrophe only, single
    spaces, so ``ds2.text.Alphabet().encode`` accepts every one.

    Raises ValueError for a bad word range and RuntimeError when the grammar cannot give
    ``n`` distinct sentences in that range (asking for too many very short ones).
    """
    _check_word_range(min_words, max_words)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    sentences: list[str] = []
    seen = set(exclude)
    attempts_left = 200 * n + 10_000  # generous: a failure means the range is too narrow
    while len(sentences) < n:
        if attempts_left == 0:
            raise RuntimeError(
                f"only {len(sentences)} of {n} distinct sentences with "
                f"{min_words}-{max_words} words; widen the range or ask for fewer"
            )
        attempts_left -= 1
        sentence = _sentence(rng)
        if min_words <= len(sentence.split()) <= max_words and sentence not in seen:
            seen.add(sentence)
            sentences.append(sentence)
    return sentences


QUESTION_STARTS = frozenset(
    _words("did will can should could would where why when how what who is was are were")
)


def spoken_form(sentence: str) -> str:
    """The text given to eSpeak: a "?" after a question gives it a question's intonation.

    Transcripts carry no punctuation, but the synthesizer should still sound like a
    speaker asking. Statements get a full stop for a falling end.
    """
    first = sentence.split(" ", 1)[0]
    return sentence + ("?" if first in QUESTION_STARTS else ".")


# --------------------------------------------------------------------------- eSpeak NG

# Values from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_Synth returns when synthesis is done; no threads
_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of exit() when data is missing
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH = 1, 2, 3
_EE_OK = 0
_RANDOM_SEED = 0  # eSpeak seeds its noise generator from the clock; fix it

# int SynthCallback(short *wav, int numsamples, espeak_EVENT *events); returns 0 to go on.
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)
_UNLOAD_LIBRARY = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary")


def _declare(lib: ctypes.CDLL) -> None:
    """Argument and return types of the functions used (ctypes guesses int otherwise)."""
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
        ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
    ]  # fmt: skip
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.restype = ctypes.c_int
    lib.espeak_Terminate.restype = ctypes.c_int


class _Espeak:
    """eSpeak NG, loaded afresh for every utterance.

    The library keeps synthesis state in static variables that no API call resets (the
    pitch-flutter phase, the gain control, the echo buffer, a clock-seeded noise
    generator), so the same call made twice gives different samples (durations differ by
    up to ~15 ms). To make every utterance a function of its arguments alone, a private
    copy of the library is loaded, used for one utterance and unloaded again: unloading
    drops its static data. It costs ~1 ms beyond selecting the voice (~3.5 ms), which
    every utterance does anyway. The copy is private so that another user of eSpeak in
    this process neither keeps it loaded nor sees its state changed.
    """

    def __init__(self):
        import espeakng_loader  # imported here so that ds2 imports without it

        self.data_path = Path(espeakng_loader.get_data_path())
        source = Path(espeakng_loader.get_library_path())
        folder = tempfile.mkdtemp(prefix="ds2-espeak-")
        weakref.finalize(self, _remove_folder, folder, os.getpid())
        self.library_path = Path(folder) / f"ds2-{source.name}"
        shutil.copyfile(source, self.library_path)
        self._chunks: list[np.ndarray] = []
        # Keep a reference: ctypes frees the trampoline with the Python object, and the
        # library would then call freed memory.
        self._callback = _SYNTH_CALLBACK(self._collect)
        with self._fresh_library() as (_, sample_rate):
            self.sample_rate = sample_rate

    @contextlib.contextmanager
    def _fresh_library(self):
        """Yield (library, sample rate) initialized from scratch; unload it afterwards."""
        lib = ctypes.CDLL(str(self.library_path), mode=getattr(os, "RTLD_LOCAL", 0))
        initialized = False
        try:
            _declare(lib)
            sample_rate = lib.espeak_Initialize(
                _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data_path).encode(), _INITIALIZE_DONT_EXIT
            )
            if sample_rate <= 0:
                raise RuntimeError(f"espeak_Initialize failed (data path {self.data_path})")
            initialized = True
            seed = getattr(lib, "espeak_ng_SetRandSeed", None)  # eSpeak NG >= 1.52
            if seed is not None:
                seed.argtypes = [ctypes.c_long]
                seed(_RANDOM_SEED)
            lib.espeak_SetSynthCallback(self._callback)
            yield lib, sample_rate
        finally:
            if initialized:
                lib.espeak_Terminate()
            _UNLOAD_LIBRARY(lib._handle)

    def _collect(self, wav, n_samples, events) -> int:
        if wav and n_samples > 0:  # wav is NULL at the end; n_samples may be 0 mid-stream
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        return 0

    def variant_exists(self, variant: str) -> bool:
        return (self.data_path / "voices" / "!v" / variant).is_file()

    def speak(self, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        """int16 samples at ``self.sample_rate``, shape = (n_samples,). Caller holds the lock."""
        variant = _variant(voice)
        # eSpeak ignores an unknown variant without an error; check it here instead.
        if variant and not self.variant_exists(variant):
            raise ValueError(f"unknown eSpeak voice variant {variant!r} in {voice!r}")
        encoded = text.encode("utf-8") + b"\0"
        with self._fresh_library() as (lib, _):
            if lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise ValueError(f"unknown eSpeak voice {voice!r}")
            # Parameters after the voice: selecting a voice resets them.
            for parameter, value in ((_PARAM_RATE, rate), (_PARAM_PITCH, pitch), (_PARAM_VOLUME, VOLUME)):
                lib.espeak_SetParameter(parameter, value, 0)
            self._chunks = []
            status = lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            lib.espeak_Synchronize()
        if status != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed with status {status} for {text!r}")
        chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


def _remove_folder(folder: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # a forked child that exits must not delete the parent's copy
        shutil.rmtree(folder, ignore_errors=True)


_ENGINE: _Espeak | None = None
_ENGINE_LOCK = threading.Lock()  # the engine's buffer and the library are one per process


def _engine() -> _Espeak:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Espeak()
    return _ENGINE


def native_sample_rate() -> int:
    """eSpeak NG's output rate in Hz (22050 for its formant synthesizer)."""
    with _ENGINE_LOCK:
        return _engine().sample_rate


def check_voice(voice: str) -> None:
    """Raise ValueError unless eSpeak knows ``voice`` (language and variant)."""
    synthesize("a", voice, rate=175, pitch=50)


def synthesize(text: str, voice: str, rate: int, pitch: int) -> torch.Tensor:
    """Speak ``text`` with an eSpeak NG voice.

    Parameters
    ----------
    text: what to say (UTF-8; punctuation shapes the intonation).
    voice: ``<language>[+<variant>]``, e.g. ``"en-us+f3"``.
    rate: speaking rate in words per minute, 80-450.
    pitch: base pitch, 0-100 (50 is the voice's own).

    Returns
    -------
    torch.Tensor, shape = (n_samples,), float32 in [-1, 1), at ``audio.SAMPLE_RATE``
    (resampled from eSpeak's native rate).

    The same arguments always give the same samples: eSpeak starts from scratch for
    every call. Thread-safe (one engine per process, behind a lock). Raises ValueError
    for empty text, an unknown voice or out-of-range settings.
    """
    if not text.strip():
        raise ValueError("nothing to synthesize: empty text")
    if not 80 <= rate <= 450:
        raise ValueError(f"rate must be 80-450 words per minute, got {rate}")
    if not 0 <= pitch <= 100:
        raise ValueError(f"pitch must be 0-100, got {pitch}")
    with _ENGINE_LOCK:
        engine = _engine()
        samples = engine.speak(text, voice, rate, pitch)
        native_rate = engine.sample_rate
    waveform = torch.from_numpy(samples.astype(np.float32) / INT16_SCALE)
    return audio.resample(waveform, native_rate).contiguous()


# --------------------------------------------------------------------------- corpus


def _plan(config: SynthConfig) -> dict[str, list[dict]]:
    """Every utterance's text, voice, rate and pitch, before any audio is made.

    Dev and test sentences are drawn first (so they do not depend on ``n_train``), each
    excluding those drawn before it. Voices go round-robin over a shuffled order so that
    each voice of a split gets the same share of utterances (within one).
    """
    sentence_rng = random.Random(f"{config.seed}:sentences")
    texts: dict[str, list[str]] = {}
    taken: set[str] = set()
    for split in ("dev", "test", "train"):
        texts[split] = generate_sentences(
            config.n_utterances(split), sentence_rng, config.min_words, config.max_words, taken
        )
        taken.update(texts[split])

    plan = {}
    for split in SPLITS:
        rng = random.Random(f"{config.seed}:{split}:voices")
        voices = config.resolved_voices(split)
        assigned = [voices[i % len(voices)] for i in range(len(texts[split]))]
        rng.shuffle(assigned)
        plan[split] = [
            {
                "utt_id": f"{split}_{index:05d}",
                "text": text,
                "voice": voice,
                "rate": rng.randint(*config.rate_range),
                "pitch": rng.randint(*config.pitch_range),
            }
            for index, (text, voice) in enumerate(zip(texts[split], assigned))
        ]
    return plan


def _render(job: tuple[str, str, int, int, str]) -> int:
    """Synthesize one utterance, write its wav and its transcript beside it (same name,
    .txt: the folder layout `ds2 prepare folder` reads); returns its length in samples."""
    text, voice, rate, pitch, path = job
    waveform = synthesize(spoken_form(text), voice, rate, pitch)
    soundfile.write(path, waveform.numpy(), audio.SAMPLE_RATE, subtype="PCM_16")
    Path(path).with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
    return waveform.numel()


def _init_worker() -> None:
    global _ENGINE_LOCK
    # The parent's lock may have been held by one of its threads at the fork; that
    # thread does not exist here and would never release it.
    _ENGINE_LOCK = threading.Lock()
    # One process per core already; torch's own threads would only compete with them
    # (and OpenMP thread pools are not safe to use after a fork).
    torch.set_num_threads(1)


def _default_workers() -> int:
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1  # spawn would re-import torch in every worker: slower than one process
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, MAX_WORKERS))


def synthesize_corpus(
    out_dir: str | Path, config: SynthConfig, progress: bool = True, workers: int | None = None
) -> dict[str, Path]:
    """Synthesize train/dev/test and write their audio and manifests.

    Writes ``out_dir/wav/<split>/<utt_id>.wav`` (16 kHz mono PCM_16) with its transcript
    in ``<utt_id>.txt`` beside it, and
    ``out_dir/<split>.json`` (JSON lines: ``audio_filepath`` relative to ``out_dir``,
    ``duration`` in seconds, ``text``, and ``voice``, ``speaker`` (= the voice), ``rate``
    (words per minute), ``pitch`` (0-100)). Everything is decided by ``config`` before
    any audio is made, so the same config gives byte-identical manifests whatever the
    number of ``workers`` (forked processes; default: one per available core, at most
    MAX_WORKERS; 1 runs in this process).

    Returns {"train": path, "dev": path, "test": path} of the manifests.
    """
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out_dir = Path(out_dir)
    plan = _plan(config)
    for voice in sorted({u["voice"] for split in SPLITS for u in plan[split]}):
        check_voice(voice)  # fail before minutes of synthesis, not in the middle
    jobs = []
    for split in SPLITS:
        (out_dir / "wav" / split).mkdir(parents=True, exist_ok=True)
        for utterance in plan[split]:
            utterance["path"] = (out_dir / "wav" / split / f"{utterance['utt_id']}.wav").resolve()
            settings = (utterance["text"], utterance["voice"], utterance["rate"], utterance["pitch"])
            jobs.append((*settings, str(utterance["path"])))
    workers = min(workers or _default_workers(), max(len(jobs), 1))
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(
                multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker)
            )
            rendered = pool.imap(_render, jobs, chunksize=8)  # imap keeps the order of jobs
        else:
            rendered = map(_render, jobs)
        bar = tqdm(rendered, total=len(jobs), disable=not progress, desc="synthesizing", unit="utt")
        lengths = iter(list(bar))  # samples per utterance, in the order of the plan
    manifests = {}
    for split in SPLITS:
        records = [
            {
                "audio_filepath": str(utterance["path"]),
                "duration": next(lengths) / audio.SAMPLE_RATE,
                "text": utterance["text"],
                "voice": utterance["voice"],
                "speaker": utterance["voice"],
                "rate": utterance["rate"],
                "pitch": utterance["pitch"],
            }
            for utterance in plan[split]
        ]
        manifests[split] = out_dir / f"{split}.json"
        write_manifest(manifests[split], records)
    return manifests
