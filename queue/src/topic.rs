//! Topic-exchange matching, as RabbitMQ does it: words separated by `.`, `*` matches exactly one word, `#`
//! matches zero or more words.

pub fn topic_matches(pattern: &str, key: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = if key.is_empty() { Vec::new() } else { key.split('.').collect() };
    matches(&pattern, &key)
}

fn matches(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => (0..=key.len()).any(|skip| matches(rest, &key[skip..])),
        Some((word, rest)) => match key.split_first() {
            Some((k, key_rest)) => (*word == "*" || word == k) && matches(rest, key_rest),
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn table() {
        let cases = [
            ("job.#", "job.video.succeeded", true),
            ("job.#", "job", true),
            ("job.#", "worker.heartbeat.w1", false),
            ("worker.heartbeat.#", "worker.heartbeat.w1", true),
            ("worker.*", "worker.w1", true),
            ("worker.*", "worker.w1.x", false),
            ("worker.all", "worker.all", true),
            ("worker.all", "worker.w1", false),
            ("#", "anything.at.all", true),
            ("#", "", true),
            ("*.video.*", "job.video.failed", true),
            ("*.video.*", "job.audio.failed", false),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.#.z", "a.b.c", false),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(topic_matches(pattern, key), expected, "{pattern} vs {key}");
        }
    }
}
