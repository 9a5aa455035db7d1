"""Word count with state, written against the Pulsar Functions API only.

Each input is a sentence; every word's counter goes up by one (`incr_counter`), and the function
answers with the sentence's words and their counts so far, e.g. "to=2 be=2 or=1 not=1". Runs
unmodified on Pulsar's functions worker (with its state store) or on mlplatform's Ray runtime,
whose counters live in the platform's SQL database and are exactly once under EFFECTIVELY_ONCE.
"""

from pulsar import Function


class WordCount(Function):
    def process(self, input, context):
        words = input.split()
        for word in words:
            context.incr_counter(word, 1)
        context.record_metric("words", len(words))
        return " ".join(f"{word}={context.get_counter(word)}" for word in dict.fromkeys(words))
