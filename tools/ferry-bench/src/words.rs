//! Text that looks like chat: words drawn from a Zipf distribution (rank r has weight
//! 1/r^s, s ≈ 1, as word frequencies in natural language and chat logs follow), over a
//! vocabulary of common English words followed by a long tail of rarer made-up words.

use rand::Rng;

const COMMON: &str =
    "the i to a you and it is that of in for on be this have not with do what but \
so are just was can my if at me all no we get like yeah don't think know out up about one how \
or lol there now go it's good they he from an time would when will then your as more some \
people any need see ok right here work well make use also really why thanks try because want \
only way which too thing other new who still should much even got could been did sure yes \
something got fix bug build test server client channel nick message log error code file config \
version release patch branch commit merge review issue kernel network connection socket timeout \
linux debian package install update upgrade python rust compile link crash memory cpu disk \
today tomorrow yesterday morning night week hey hello hi bye later back away lunch coffee \
maybe probably actually thing stuff cool nice great awesome weird strange problem question \
answer help idea point sense wrong true false long short fast slow big small old first last";

/// A sampler of words and sentences.
pub struct Words {
    vocab: Vec<String>,
    cumulative: Vec<f64>,
}

impl Words {
    /// `size` words in all (at least the common ones), Zipf exponent `s`.
    pub fn new(size: usize, s: f64) -> Words {
        let mut vocab: Vec<String> = COMMON.split_whitespace().map(str::to_string).collect();
        let mut i = 0u64;
        while vocab.len() < size {
            vocab.push(made_up(i));
            i += 1;
        }
        let mut total = 0.0;
        let cumulative = (0..vocab.len())
            .map(|r| {
                total += 1.0 / ((r + 1) as f64).powf(s);
                total
            })
            .collect();
        Words { vocab, cumulative }
    }

    pub fn len(&self) -> usize {
        self.vocab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vocab.is_empty()
    }

    /// The word of rank `r` (0 = most frequent).
    pub fn rank(&self, r: usize) -> &str {
        &self.vocab[r.min(self.vocab.len() - 1)]
    }

    pub fn word(&self, rng: &mut impl Rng) -> &str {
        let total = *self.cumulative.last().expect("non-empty vocabulary");
        let x = rng.gen::<f64>() * total;
        let i = self.cumulative.partition_point(|c| *c < x);
        &self.vocab[i.min(self.vocab.len() - 1)]
    }

    /// A chat line of 2–18 words (short lines are the most common).
    pub fn sentence(&self, rng: &mut impl Rng) -> String {
        let n = 2 + (rng.gen::<f64>().powi(2) * 16.0) as usize;
        let mut s = String::new();
        for k in 0..n {
            if k > 0 {
                s.push(' ');
            }
            s.push_str(self.word(rng));
        }
        s
    }
}

/// A pronounceable made-up word for rank `i` of the tail.
fn made_up(i: u64) -> String {
    const C: &[u8] = b"bcdfghklmnprstvz";
    const V: &[u8] = b"aeiou";
    let mut s = String::new();
    let mut x = i + 7;
    loop {
        s.push(C[(x % 16) as usize] as char);
        x /= 16;
        s.push(V[(x % 5) as usize] as char);
        x /= 5;
        if x == 0 {
            break;
        }
    }
    s
}

/// Heavy-tailed weights for `n` items (item k has weight 1/(k+1)^s).
pub fn zipf_weights(n: usize, s: f64) -> Vec<f64> {
    (0..n).map(|k| 1.0 / ((k + 1) as f64).powf(s)).collect()
}

/// Index drawn with probability proportional to `weights`.
pub fn pick(weights: &[f64], rng: &mut impl Rng) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = rng.gen::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}
