//! Text to sentences and clauses, before phonemisation. espeak-ng 1.51 cannot tell us which punctuation ended a
//! clause (it lacks `espeak_TextToPhonemesWithTerminator`), so the splitting happens here and each clause keeps
//! its terminator; the phoneme assembly re-appends it so the model sees the pause.
//!
//! Rules (heuristics, each tested below):
//! - `!` `?` end a sentence when followed by a space, the end, or a closing quote/bracket; so does `.` unless it
//!   is part of a number (`3.5`), a domain (`example.com`), a title (`Dr.`), `e.g.`/`i.e.`/`vs.`, an initial
//!   (`J. Smith`), an abbreviation like `etc.` not followed by a capital, or any word followed by a lowercase
//!   word. An ellipsis followed by a lowercase word is a clause break instead.
//! - CJK and other scripts' full stops, question and exclamation marks (`。！？।؟`) always end a sentence.
//! - Every line break ends a sentence (one utterance per line, as the Piper command line does); a sentence
//!   without final punctuation ends with a full stop.
//! - `,` `;` `:` break a clause when followed by a space or the end (not `1,000` or `10:30`); their fullwidth and
//!   ideographic forms (`，、；：`) and the Arabic comma always do.
//! - Clauses without a letter or digit (stray punctuation, symbols) are dropped.

use unicode_normalization::UnicodeNormalization;

/// The punctuation that ended a clause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminator {
    Period,
    Question,
    Exclamation,
    Comma,
    Colon,
    Semicolon,
}

impl Terminator {
    /// What Piper appends to the clause's phonemes: the mark, plus a space after a mid-sentence break.
    pub fn phonemes(self) -> &'static str {
        match self {
            Terminator::Period => ".",
            Terminator::Question => "?",
            Terminator::Exclamation => "!",
            Terminator::Comma => ", ",
            Terminator::Colon => ": ",
            Terminator::Semicolon => "; ",
        }
    }

    fn ends_sentence(self) -> bool {
        matches!(self, Terminator::Period | Terminator::Question | Terminator::Exclamation)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    /// The clause's text without its terminator, trimmed.
    pub text: String,
    pub terminator: Terminator,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentence {
    /// At least one clause; the last one's terminator ends the sentence.
    pub clauses: Vec<Clause>,
}

impl Sentence {
    /// The sentence as text again (for logs and progress messages).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.clauses {
            out.push_str(&c.text);
            out.push_str(c.terminator.phonemes().trim_end());
            out.push(' ');
        }
        out.truncate(out.trim_end().len());
        out
    }
}

/// NFD (canonical decomposition), as Piper applies to phoneme strings before mapping them to ids.
pub fn nfd(s: &str) -> String {
    s.nfd().collect()
}

/// Splits `text` into sentences of clauses (see the module docs for the rules).
pub fn sentences(text: &str) -> Vec<Sentence> {
    let chars: Vec<char> = text.chars().collect();
    let mut splitter = Splitter::default();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if is_line_break(c) {
            splitter.end_sentence(None);
            i += 1;
            continue;
        }
        let Some(kind) = mark(c) else {
            splitter.buf.push(c);
            i += 1;
            continue;
        };
        // A run of marks ("?!", "...", "!!!") counts as one; closing quotes and brackets after it stay in the
        // clause.
        let mut end = i;
        while end < chars.len() && mark(chars[end]).is_some() {
            end += 1;
        }
        let mut after = end;
        while after < chars.len() && is_closer(chars[after]) {
            after += 1;
        }
        let free = after == chars.len() || chars[after].is_whitespace();
        let decision = match kind {
            Mark::Always(t) => Some(t),
            Mark::Ascii(_) if !free => None,
            Mark::Ascii(t) if t != Terminator::Period => Some(t),
            Mark::Ascii(_) => period(&chars, i, end, after),
        };
        match decision {
            None => splitter.buf.extend(&chars[i..end]),
            Some(t) => {
                splitter.buf.extend(&chars[end..after]);
                if t.ends_sentence() {
                    splitter.end_sentence(Some(t));
                } else {
                    splitter.end_clause(t);
                }
                i = after;
                continue;
            }
        }
        i = end;
    }
    splitter.end_sentence(None);
    splitter.out
}

#[derive(Default)]
struct Splitter {
    buf: String,
    clauses: Vec<Clause>,
    out: Vec<Sentence>,
}

impl Splitter {
    fn end_clause(&mut self, terminator: Terminator) {
        let text = self.buf.trim().to_string();
        self.buf.clear();
        if text.chars().any(char::is_alphanumeric) {
            self.clauses.push(Clause { text, terminator });
        } else if terminator.ends_sentence()
            && let Some(last) = self.clauses.last_mut()
        {
            // "Well, !" : the sentence still ends with its mark.
            last.terminator = terminator;
        }
    }

    /// Ends the sentence at `terminator`, or implicitly (a line break, the end of the text): then pending words
    /// end with a full stop and a clause that already has its mark keeps it.
    fn end_sentence(&mut self, terminator: Option<Terminator>) {
        match terminator {
            Some(t) => self.end_clause(t),
            None if self.buf.chars().any(char::is_alphanumeric) => self.end_clause(Terminator::Period),
            None => self.buf.clear(),
        }
        if !self.clauses.is_empty() {
            self.out.push(Sentence { clauses: std::mem::take(&mut self.clauses) });
        }
    }
}

#[derive(Clone, Copy)]
enum Mark {
    /// ASCII punctuation, a break only when followed by a space or the end.
    Ascii(Terminator),
    /// Punctuation of scripts written without spaces after it: always a break.
    Always(Terminator),
}

fn mark(c: char) -> Option<Mark> {
    use Terminator::*;
    Some(match c {
        '.' => Mark::Ascii(Period),
        '!' => Mark::Ascii(Exclamation),
        '?' => Mark::Ascii(Question),
        ',' => Mark::Ascii(Comma),
        ':' => Mark::Ascii(Colon),
        ';' => Mark::Ascii(Semicolon),
        '…' => Mark::Ascii(Period),
        '。' | '．' | '｡' | '।' | '॥' | '۔' | '։' => Mark::Always(Period),
        '？' | '؟' | '⁇' => Mark::Always(Question),
        '！' | '‼' => Mark::Always(Exclamation),
        '，' | '、' | '､' | '،' => Mark::Always(Comma),
        '；' | '؛' => Mark::Always(Semicolon),
        '：' => Mark::Always(Colon),
        _ => return None,
    })
}

fn is_line_break(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{2028}' | '\u{2029}' | '\u{85}')
}

fn is_closer(c: char) -> bool {
    matches!(c, '"' | '\'' | ')' | ']' | '}' | '»' | '”' | '’' | '」' | '』' | '）' | '】' | '›')
}

fn is_opener(c: char) -> bool {
    matches!(c, '"' | '\'' | '(' | '[' | '{' | '«' | '“' | '‘' | '「' | '『' | '（' | '【' | '‹')
}

/// Titles and Latin abbreviations that are followed by more of the same sentence.
const NEVER_FINAL: &[&str] = &[
    "mr", "mrs", "ms", "mx", "dr", "prof", "st", "mt", "sr", "jr", "rev", "hon", "gen", "capt", "col", "lt", "sgt",
    "gov", "sen", "rep", "pres", "fr", "e.g", "i.e", "vs", "cf", "viz", "approx", "ca",
];

/// Abbreviations that end a sentence only before a capitalised word (`etc. The`, but `No. 5`).
const ABBREVIATIONS: &[&str] = &[
    "etc", "inc", "ltd", "co", "corp", "dept", "est", "no", "nos", "fig", "figs", "vol", "vols", "ch", "p", "pp", "ed",
    "eds", "al", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
];

/// Whether the `.` run at `chars[start..end]` (followed by a space or the end at `after`) ends the sentence.
fn period(chars: &[char], start: usize, end: usize, after: usize) -> Option<Terminator> {
    let next = chars[after..].iter().find(|c| !c.is_whitespace() && !is_opener(**c)).copied();
    let Some(next) = next else { return Some(Terminator::Period) };
    let next_lower = next.is_lowercase();
    let ellipsis = end - start > 1 || chars[start] == '…';
    if ellipsis {
        return Some(if next_lower { Terminator::Comma } else { Terminator::Period });
    }
    if next_lower {
        return None;
    }
    // An apostrophe is part of the word ("don't."), not a quote that opens it.
    let boundary = |c: &char| c.is_whitespace() || (is_opener(*c) && *c != '\'');
    let word_start = chars[..start].iter().rposition(boundary).map_or(0, |p| p + 1);
    let word: String = chars[word_start..start].iter().collect::<String>().to_lowercase();
    if word.is_empty() {
        return Some(Terminator::Period);
    }
    let single_letter = word.chars().count() == 1 && word.chars().all(char::is_alphabetic);
    if single_letter || NEVER_FINAL.contains(&word.as_str()) {
        return None;
    }
    if ABBREVIATIONS.contains(&word.as_str()) && !next.is_uppercase() {
        return None;
    }
    Some(Terminator::Period)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Terminator::*;

    /// Sentences as lists of (clause text, terminator).
    fn split(text: &str) -> Vec<Vec<(String, Terminator)>> {
        sentences(text).into_iter().map(|s| s.clauses.into_iter().map(|c| (c.text, c.terminator)).collect()).collect()
    }

    fn s(parts: &[(&str, Terminator)]) -> Vec<(String, Terminator)> {
        parts.iter().map(|(t, p)| (t.to_string(), *p)).collect()
    }

    #[test]
    fn sentences_and_clauses_keep_their_punctuation() {
        assert_eq!(
            split("Hello, world. How are you? Fine; thanks: really!"),
            vec![
                s(&[("Hello", Comma), ("world", Period)]),
                s(&[("How are you", Question)]),
                s(&[("Fine", Semicolon), ("thanks", Colon), ("really", Exclamation)]),
            ]
        );
    }

    #[test]
    fn text_without_final_punctuation_ends_with_a_period() {
        assert_eq!(split("  no punctuation here  "), vec![s(&[("no punctuation here", Period)])]);
    }

    #[test]
    fn numbers_domains_and_times_do_not_break() {
        assert_eq!(
            split("It costs 3.5 dollars, or 1,000 cents at 10:30 on example.com. Next."),
            vec![
                s(&[("It costs 3.5 dollars", Comma), ("or 1,000 cents at 10:30 on example.com", Period)]),
                s(&[("Next", Period)]),
            ]
        );
    }

    #[test]
    fn abbreviations_titles_and_initials_do_not_break() {
        assert_eq!(
            split("Dr. Smith met J. R. Jones, e.g. Mr. Brown. Apples etc. are fruit."),
            vec![
                s(&[("Dr. Smith met J. R. Jones", Comma), ("e.g. Mr. Brown", Period)]),
                s(&[("Apples etc. are fruit", Period)]),
            ]
        );
        assert_eq!(
            split("See No. 5 and so on etc. Then stop."),
            vec![s(&[("See No. 5 and so on etc", Period)]), s(&[("Then stop", Period)])]
        );
    }

    #[test]
    fn a_lowercase_next_word_continues_the_sentence() {
        assert_eq!(split("It is approx. ten km. wide"), vec![s(&[("It is approx. ten km. wide", Period)])]);
        assert_eq!(split("I don't. You do."), vec![s(&[("I don't", Period)]), s(&[("You do", Period)])]);
    }

    #[test]
    fn runs_of_marks_count_once_and_closing_quotes_stay_inside() {
        assert_eq!(
            split("Really?! \"Yes.\" (Quite!) Done..."),
            vec![
                s(&[("Really", Question)]),
                s(&[("\"Yes\"", Period)]),
                s(&[("(Quite)", Exclamation)]),
                s(&[("Done", Period)]),
            ]
        );
    }

    #[test]
    fn an_ellipsis_before_a_lowercase_word_is_a_pause() {
        assert_eq!(
            split("I was… thinking... Maybe not."),
            vec![s(&[("I was", Comma), ("thinking", Period)]), s(&[("Maybe not", Period)])]
        );
    }

    #[test]
    fn line_breaks_end_sentences() {
        assert_eq!(
            split("First line\nSecond line,\r\n\r\nThird."),
            vec![s(&[("First line", Period)]), s(&[("Second line", Comma)]), s(&[("Third", Period)])]
        );
    }

    #[test]
    fn cjk_and_other_scripts_punctuation() {
        assert_eq!(
            split("你好，世界。你好吗？好！"),
            vec![s(&[("你好", Comma), ("世界", Period)]), s(&[("你好吗", Question)]), s(&[("好", Exclamation)])]
        );
        assert_eq!(
            split("مرحبا، كيف حالك؟ بخير"),
            vec![s(&[("مرحبا", Comma), ("كيف حالك", Question)]), s(&[("بخير", Period)])]
        );
        assert_eq!(split("नमस्ते। ठीक"), vec![s(&[("नमस्ते", Period)]), s(&[("ठीक", Period)])]);
    }

    #[test]
    fn clauses_without_words_are_dropped() {
        assert_eq!(split("... , ; !!"), Vec::<Vec<(String, Terminator)>>::new());
        assert_eq!(split(""), Vec::<Vec<(String, Terminator)>>::new());
        assert_eq!(split("Well, - !"), vec![s(&[("Well", Exclamation)])]);
    }

    #[test]
    fn sentence_text_round_trips_for_logs() {
        let all = sentences("Hello,  world!");
        assert_eq!(all[0].text(), "Hello, world!");
    }

    #[test]
    fn nfd_decomposes() {
        assert_eq!(nfd("ç"), "c\u{327}");
        assert_eq!(nfd("həlˈoʊ"), "həlˈoʊ");
    }
}
