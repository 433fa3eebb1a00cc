"""A small English grammar: distinct, normalized sentences from a seeded random source.

About 300 nouns, verbs and adjectives (~900 word forms with inflections and numbers
spelled out), put together as statements, questions, compound sentences and contractions,
with agreement looked up rather than guessed, so that an n-gram LM trained on the text
learns something real. It is the text of the synthesized corpus (:mod:`ds2.synth`) and
of the recipes' language models.

Sentences are plain ``str``: lower case a-z, space and apostrophe, single spaces (what
``ds2.text.Alphabet()`` encodes), with no punctuation; :func:`spoken_form` adds the
"?" or "." a speech synthesizer needs for the intonation. Pure Python: no torch, no numpy.

Usage::

    import random
    from ds2.grammar import generate_sentences
    sentences = generate_sentences(1000, random.Random(0), min_words=3, max_words=12)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# --------------------------------------------------------------------------- word lists
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

# --------------------------------------------------------------------------- phrases

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


# --------------------------------------------------------------------------- sentences


def check_word_range(min_words: int, max_words: int) -> None:
    """Raise ValueError unless 1 <= min_words <= max_words (sentence lengths, in words)."""
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
    check_word_range(min_words, max_words)
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
