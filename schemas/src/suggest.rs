//! "Did you mean …?" suggestions for misspelt argument, block and enum names.
//!
//! Every "Unsupported …" diagnostic tries a suggestion before falling back to listing what is expected,
//! so a typo like `maxmemroy` points straight at `maxmemory`. The distance is our own small
//! optimal-string-alignment implementation (Levenshtein plus adjacent transpositions, the most common typo).

/// Returns the candidate closest to `input`, if it is close enough to be a plausible typo.
///
/// Comparison ignores ASCII case. A candidate qualifies when its edit distance (insertions, deletions,
/// substitutions and swaps of two adjacent characters each count 1) is at most `max(1, len(input) / 3)`.
/// Ties go to the lexicographically smallest candidate, so the answer never depends on iteration order.
pub fn did_you_mean<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let input_chars: Vec<char> = input.chars().map(|c| c.to_ascii_lowercase()).collect();
    let limit = (input_chars.len() / 3).max(1);
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        let candidate_chars: Vec<char> =
            candidate.chars().map(|c| c.to_ascii_lowercase()).collect();
        let distance = edit_distance(&input_chars, &candidate_chars);
        if distance > limit {
            continue;
        }
        let better = match best {
            None => true,
            Some((best_distance, best_candidate)) => {
                (distance, candidate) < (best_distance, best_candidate)
            }
        };
        if better {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

/// Optimal string alignment distance between two character sequences.
fn edit_distance(left: &[char], right: &[char]) -> usize {
    // Three rolling rows: the one two back is needed for transpositions.
    let width = right.len() + 1;
    let mut two_back = vec![0usize; width];
    let mut previous: Vec<usize> = (0..width).collect();
    let mut current = vec![0usize; width];
    for i in 1..=left.len() {
        current[0] = i;
        for j in 1..=right.len() {
            let substitution_cost = usize::from(left[i - 1] != right[j - 1]);
            let mut value = (previous[j] + 1)
                .min(current[j - 1] + 1)
                .min(previous[j - 1] + substitution_cost);
            if i > 1 && j > 1 && left[i - 1] == right[j - 2] && left[i - 2] == right[j - 1] {
                value = value.min(two_back[j - 2] + 1);
            }
            current[j] = value;
        }
        std::mem::swap(&mut two_back, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    previous[right.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn distance(left: &str, right: &str) -> usize {
        let left: Vec<char> = left.chars().collect();
        let right: Vec<char> = right.chars().collect();
        edit_distance(&left, &right)
    }

    #[test]
    fn distances() {
        let cases = [
            ("", "", 0),
            ("", "abc", 3),
            ("abc", "", 3),
            ("port", "port", 0),
            ("prot", "port", 1),
            ("maxmemroy", "maxmemory", 1),
            ("kitten", "sitting", 3),
            ("ca", "abc", 3),
            ("löcale", "locale", 1),
        ];
        for (left, right, expected) in cases {
            assert_eq!(distance(left, right), expected, "{left} -> {right}");
            assert_eq!(distance(right, left), expected, "{right} -> {left}");
        }
    }

    #[test]
    fn suggestions() {
        let valkey = [
            "version",
            "port",
            "maxmemory",
            "maxmemory_policy",
            "appendonly",
            "password",
        ];
        let postgres_blocks = ["role", "database", "schema", "grant"];
        let cases: [(&str, &[&str], Option<&str>); 12] = [
            ("maxmemroy", &valkey, Some("maxmemory")),
            ("maxmemory_polcy", &valkey, Some("maxmemory_policy")),
            ("prot", &valkey, Some("port")),
            ("Port", &valkey, Some("port")),
            ("passwd", &valkey, Some("password")),
            ("verison", &valkey, Some("version")),
            ("appendfsync", &valkey, None),
            ("x", &valkey, None),
            ("rol", &postgres_blocks, Some("role")),
            ("databse", &postgres_blocks, Some("database")),
            ("user", &postgres_blocks, None),
            ("table", &postgres_blocks, None),
        ];
        for (input, candidates, expected) in cases {
            assert_eq!(
                did_you_mean(input, candidates.iter().copied()),
                expected,
                "{input}"
            );
        }
    }

    #[test]
    fn ties_are_deterministic() {
        // "bat" is one edit from both; the lexicographically smaller wins whatever the order.
        assert_eq!(did_you_mean("bat", ["cat", "bad"]), Some("bad"));
        assert_eq!(did_you_mean("bat", ["bad", "cat"]), Some("bad"));
        // A closer candidate beats an earlier one.
        assert_eq!(did_you_mean("tcp", ["tap", "tcp"]), Some("tcp"));
        assert_eq!(did_you_mean("anything", std::iter::empty()), None);
    }
}
