//! Rescanning a file that changed in place by looking only at the bytes
//! around its changes.
//!
//! A database or a disk image inside a guest is rewritten a little every
//! day; scanning it whole each time costs as much as the rest of the
//! snapshot. When the rule set allows it, a file whose earlier version was
//! scanned, that kept its size and its place on disk, and that changed only
//! in a few 64 KiB blocks, is judged from windows around those blocks.
//!
//! Why that is exact. The rule set qualifies only when every rule's
//! condition depends on nothing but its strings' matches and `filesize`
//! (no modules, no `uint32(…)` reads, no `entrypoint`, no external
//! variables or references to other rules), and every string has a
//! bounded length (no `*`, `+` or `{n,}` in regexes, no open jumps in hex
//! strings). Then two contents of one size whose string matches are the
//! same get the same verdict. Old and new bytes differ only inside the
//! changed blocks, so a match that neither overlaps nor touches them (a
//! `fullword` or `\b` looks one byte past a match) is in both or in
//! neither. Any other match lies within the longest string's length of a
//! changed block: inside the windows. Every string is compiled as a rule of
//! its own; when none matches anywhere in the old windows or in the new
//! ones, the match sets are equal and so is the verdict, which is the old
//! version's. Otherwise the file is scanned whole.
//!
//! When no string matched anywhere in the old version (the cache remembers
//! that), the old bytes are not needed: a match in the new version would
//! have to touch a changed block, so the changed blocks and their margins
//! in the new version alone are looked at, and when nothing matches there
//! the new version is free of matches too.

use boreal::scanner::ScanParams;
use boreal::{Compiler, Scanner};
use boreal_parser::expression::{
    Expression, ExpressionKind, ForIterator, ForSelection, IdentifierOperationType,
};
use boreal_parser::file::YaraFileComponent;
use boreal_parser::hex_string::Token;
use boreal_parser::regex::{Node, RepetitionKind, RepetitionRange};
use boreal_parser::rule::{VariableDeclaration, VariableDeclarationValue};
use std::collections::HashSet;

/// Every string of a rule set as a rule of its own, and how far around a
/// change a match can reach.
pub struct WindowScanner {
    scanner: Scanner,
    /// Bytes kept on each side of a changed range.
    pub margin: u64,
    /// No rule or string is private: a scan's report shows every string's
    /// matches, so it tells when none matched at all.
    pub sees_all: bool,
}

impl WindowScanner {
    /// Builds the scanner for `sources` (rule texts), or says why this rule
    /// set must scan changed files whole.
    pub fn build(sources: &[&str]) -> Result<WindowScanner, String> {
        let mut rules = String::new();
        let mut longest = 0u64;
        let mut n = 0usize;
        let mut sees_all = true;
        for text in sources {
            let file = boreal_parser::parse(text).map_err(|_| "a rule file does not parse")?;
            for c in &file.components {
                let rule = match c {
                    YaraFileComponent::Rule(r) => r,
                    YaraFileComponent::Import(_) => continue,
                    YaraFileComponent::Include(_) => {
                        return Err("a rule file includes another".into());
                    }
                };
                sees_all &= !rule.is_private && rule.variables.iter().all(|v| !v.modifiers.private);
                if !local(&rule.condition, &mut HashSet::new()) {
                    return Err(format!(
                        "rule {} looks at more than its strings and the file size",
                        rule.name
                    ));
                }
                for v in &rule.variables {
                    let len = max_len(v).ok_or_else(|| {
                        format!("a string of rule {} has no length bound", rule.name)
                    })?;
                    longest = longest.max(len);
                    let decl = text
                        .get(v.span.clone())
                        .ok_or("a string's text is not found")?;
                    rules.push_str(&format!(
                        "rule s{n} {{\n strings:\n  {decl}\n condition:\n  any of them\n}}\n"
                    ));
                    n += 1;
                }
            }
        }
        let mut compiler = Compiler::new();
        compiler
            .add_rules_str(&rules)
            .map_err(|e| format!("the strings do not compile alone: {e:?}"))?;
        let mut scanner = compiler.finalize();
        scanner.set_scan_params(ScanParams::default().string_max_nb_matches(1));
        Ok(WindowScanner {
            scanner,
            // A match touching a change starts at most `longest` bytes
            // before it; one byte more on each side gives it the context
            // its boundaries look at.
            margin: longest + 2,
            sees_all,
        })
    }

    /// Whether any string matches anywhere in `data`.
    pub fn any_match(&self, data: &[u8]) -> bool {
        match self.scanner.scan_mem(data) {
            Ok(r) => !r.rules.is_empty(),
            // Unsure: the caller scans the file whole.
            Err(_) => true,
        }
    }
}

/// Whether `e` depends only on string matches, `filesize` and constants.
/// `bound` holds the loop variables in scope.
fn local(e: &Expression, bound: &mut HashSet<String>) -> bool {
    use ExpressionKind as K;
    match &e.expr {
        K::Filesize
        | K::Integer(_)
        | K::Double(_)
        | K::Count(_)
        | K::Boolean(_)
        | K::Variable(_)
        | K::Bytes(_)
        | K::Regex(_) => true,
        K::Entrypoint | K::ReadInteger { .. } | K::ForRules { .. } => false,
        K::CountInRange { from, to, .. } | K::VariableIn { from, to, .. } => {
            local(from, bound) && local(to, bound)
        }
        K::Offset {
            occurence_number, ..
        }
        | K::Length {
            occurence_number, ..
        } => local(occurence_number, bound),
        K::VariableAt { offset, .. } => local(offset, bound),
        K::Neg(a) | K::BitwiseNot(a) | K::Not(a) | K::Defined(a) | K::Matches(a, _) => {
            local(a, bound)
        }
        K::Add(a, b)
        | K::Sub(a, b)
        | K::Mul(a, b)
        | K::Div(a, b)
        | K::Mod(a, b)
        | K::BitwiseXor(a, b)
        | K::BitwiseAnd(a, b)
        | K::BitwiseOr(a, b)
        | K::ShiftLeft(a, b)
        | K::ShiftRight(a, b)
        | K::Eq(a, b)
        | K::NotEq(a, b)
        | K::IEquals(a, b)
        | K::Cmp {
            left: a, right: b, ..
        }
        | K::Contains {
            haystack: a,
            needle: b,
            ..
        }
        | K::StartsWith {
            expr: a, prefix: b, ..
        }
        | K::EndsWith {
            expr: a, suffix: b, ..
        } => local(a, bound) && local(b, bound),
        K::And(v) | K::Or(v) => v.iter().all(|x| local(x, bound)),
        K::For {
            selection, body, ..
        } => selection_local(selection, bound) && body.as_ref().is_none_or(|b| local(b, bound)),
        K::ForIn {
            selection,
            from,
            to,
            ..
        } => selection_local(selection, bound) && local(from, bound) && local(to, bound),
        K::ForAt {
            selection, offset, ..
        } => selection_local(selection, bound) && local(offset, bound),
        K::ForIdentifiers {
            selection,
            identifiers,
            iterator,
            body,
            ..
        } => {
            let over = match iterator {
                ForIterator::Identifier(_) => false,
                ForIterator::Range { from, to } => local(from, bound) && local(to, bound),
                ForIterator::List(v) => v.iter().all(|x| local(x, bound)),
            };
            if !over || !selection_local(selection, bound) {
                return false;
            }
            let added: Vec<String> = identifiers
                .iter()
                .filter(|i| bound.insert((*i).clone()))
                .cloned()
                .collect();
            let ok = local(body, bound);
            for i in added {
                bound.remove(&i);
            }
            ok
        }
        // Only a loop's own variable, used as a value: anything else names
        // a module, an external variable or another rule.
        K::Identifier(id) => {
            bound.contains(&id.name)
                && id.operations.iter().all(|op| match &op.op {
                    IdentifierOperationType::Subscript(x) => local(x, bound),
                    _ => false,
                })
        }
    }
}

fn selection_local(s: &ForSelection, bound: &mut HashSet<String>) -> bool {
    match s {
        ForSelection::Expr { expr, .. } => local(expr, bound),
        _ => true,
    }
}

/// The most bytes one match of the string can span, or None when
/// unbounded.
fn max_len(v: &VariableDeclaration) -> Option<u64> {
    let m = &v.modifiers;
    let raw = match &v.value {
        VariableDeclarationValue::Bytes(b) => b.len() as u64,
        VariableDeclarationValue::Regex(r) => node_len(&r.ast)?,
        VariableDeclarationValue::HexString(t) => hex_len(t)?,
    };
    let plain = if m.wide { raw * 2 } else { raw };
    Some(match &m.base64 {
        // Base64 of the string at any of three alignments, plus the
        // partial groups at its ends; `wide base64` encodes the widened
        // string, so the encoding is of `plain`.
        Some(b) => {
            let enc = plain.div_ceil(3) * 4 + 8;
            plain.max(if b.wide { enc * 2 } else { enc })
        }
        None => plain,
    })
}

fn node_len(n: &Node) -> Option<u64> {
    Some(match n {
        Node::Empty | Node::Assertion(_) => 0,
        Node::Literal(_) => 1,
        Node::Char(c) => c.c.len_utf8() as u64,
        // At most one character; counted generously.
        Node::Dot | Node::Class(_) => 4,
        Node::Group(x) => node_len(x)?,
        Node::Concat(v) => v.iter().map(node_len).sum::<Option<u64>>()?,
        Node::Alternation(v) => v.iter().map(node_len).try_fold(0, |a, x| Some(a.max(x?)))?,
        Node::Repetition { node, kind, .. } => {
            let times = match kind {
                RepetitionKind::ZeroOrOne => 1,
                RepetitionKind::ZeroOrMore
                | RepetitionKind::OneOrMore
                | RepetitionKind::Range(RepetitionRange::AtLeast(_)) => return None,
                RepetitionKind::Range(RepetitionRange::Exactly(k))
                | RepetitionKind::Range(RepetitionRange::Bounded(_, k)) => u64::from(*k),
            };
            node_len(node)?.checked_mul(times)?
        }
    })
}

fn hex_len(tokens: &[Token]) -> Option<u64> {
    tokens
        .iter()
        .map(|t| match t {
            Token::Jump(j) => j.to.map(u64::from),
            Token::Alternatives(alts) => alts
                .iter()
                .map(|a| hex_len(a))
                .try_fold(0, |a, x| Some(a.max(x?))),
            _ => Some(1),
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(text: &str) -> Option<String> {
        WindowScanner::build(&[text]).err()
    }

    #[test]
    fn cairns_rules_qualify_and_reach_their_longest_string() {
        let w = WindowScanner::build(&[crate::rules::BUILTIN]).unwrap();
        // The download-and-run regex: up to 300 characters between its
        // command and its pipe, each counted as 4 bytes.
        assert!(w.margin >= 1200, "{}", w.margin);
        assert!(w.margin < 4096, "{}", w.margin);
        assert!(w.any_match(
            b"...X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*..."
        ));
        assert!(w.any_match(b"pay in BITCOIN"));
        assert!(!w.any_match(&[0u8; 70_000]));
    }

    #[test]
    fn rules_that_read_more_than_their_strings_do_not_qualify() {
        assert!(why("rule a { strings: $a = \"x\" condition: $a }").is_none());
        assert!(
            why("rule a { strings: $a = \"x\" condition: for any i in (1..#a): (@a[i] < 10) }")
                .is_none()
        );
        assert!(why("rule a { condition: uint16(0) == 0x5a4d }").is_some());
        assert!(why("import \"pe\" rule a { condition: pe.is_pe }").is_some());
        assert!(why("rule a { condition: entrypoint == 0 }").is_some());
        assert!(why("rule a { condition: true } rule b { condition: a }").is_some());
        assert!(why("rule a { condition: ext_var }").is_some());
    }

    #[test]
    fn strings_without_a_length_bound_do_not_qualify() {
        assert!(why("rule a { strings: $a = /ab{1,9}c/ condition: $a }").is_none());
        assert!(why("rule a { strings: $a = { 01 [2-4] 02 } condition: $a }").is_none());
        assert!(why("rule a { strings: $a = /ab+c/ condition: $a }").is_some());
        assert!(why("rule a { strings: $a = /ab.*c/ condition: $a }").is_some());
        assert!(why("rule a { strings: $a = /ab{3,}c/ condition: $a }").is_some());
        assert!(why("rule a { strings: $a = { 01 [2-] 02 } condition: $a }").is_some());
    }

    #[test]
    fn lengths_count_modifiers() {
        let w = |t: &str| WindowScanner::build(&[t]).unwrap().margin - 2;
        assert_eq!(w("rule a { strings: $a = \"abcd\" condition: $a }"), 4);
        assert_eq!(
            w("rule a { strings: $a = \"abcd\" wide ascii condition: $a }"),
            8
        );
        assert_eq!(
            w("rule a { strings: $a = { 01 ( 02 03 | 04 ) [1-5] 05 } condition: $a }"),
            9
        );
        assert!(w("rule a { strings: $a = \"abcdef\" base64 condition: $a }") >= 8);
        // `wide base64`: the widened string (1,200 bytes) is encoded.
        let long = "x".repeat(600);
        assert!(
            w(&format!(
                "rule a {{ strings: $a = \"{long}\" wide base64 condition: $a }}"
            )) >= 1600
        );
    }
}
