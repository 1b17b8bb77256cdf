//! Unified diffs of whole files, for `--dry-run`.

use std::fmt::Write as _;

/// Lines of context around each change.
const CONTEXT: usize = 3;
/// Above this many cells the middle of the two files is shown as one replacement instead
/// of a minimal diff (the rewrites change a few lines, so this is never reached in practice).
const MAX_CELLS: usize = 4_000_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Keep,
    Del,
    Add,
}

/// The unified diff of `before` and `after` under the name `path` (`a/` and `b/` labels
/// as git prints them); empty when they are equal.
pub fn unified(path: &str, before: &str, after: &str) -> String {
    if before == after {
        return String::new();
    }
    let a: Vec<&str> = before.split_inclusive('\n').collect();
    let b: Vec<&str> = after.split_inclusive('\n').collect();
    let ops = edit_script(&a, &b);
    let mut out = format!("--- a/{path}\n+++ b/{path}\n");
    // (op, index in a, index in b) for every step of the script.
    let mut steps = Vec::with_capacity(ops.len());
    let (mut i, mut j) = (0usize, 0usize);
    for op in ops {
        steps.push((op, i, j));
        match op {
            Op::Keep => {
                i += 1;
                j += 1;
            }
            Op::Del => i += 1,
            Op::Add => j += 1,
        }
    }
    let changed: Vec<usize> = steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.0 != Op::Keep)
        .map(|(n, _)| n)
        .collect();
    let mut k = 0;
    while let Some(&first) = changed.get(k) {
        let start = first.saturating_sub(CONTEXT);
        let mut end = first;
        // Extend the hunk while the next change is within twice the context.
        while let Some(&next) = changed.get(k + 1) {
            if next <= end + 2 * CONTEXT + 1 {
                end = next;
                k += 1;
            } else {
                break;
            }
        }
        k += 1;
        let stop = (end + CONTEXT + 1).min(steps.len());
        let hunk = steps.get(start..stop).unwrap_or_default();
        let a_len = hunk.iter().filter(|s| s.0 != Op::Add).count();
        let b_len = hunk.iter().filter(|s| s.0 != Op::Del).count();
        let (a_start, b_start) = hunk.first().map_or((0, 0), |s| (s.1, s.2));
        let _ = writeln!(
            out,
            "@@ -{} +{} @@",
            range(a_start, a_len),
            range(b_start, b_len)
        );
        for &(op, ai, bj) in hunk {
            let (sign, text) = match op {
                Op::Keep => (' ', a.get(ai).copied().unwrap_or_default()),
                Op::Del => ('-', a.get(ai).copied().unwrap_or_default()),
                Op::Add => ('+', b.get(bj).copied().unwrap_or_default()),
            };
            out.push(sign);
            out.push_str(text);
            if !text.ends_with('\n') {
                out.push_str("\n\\ No newline at end of file\n");
            }
        }
    }
    out
}

fn range(start: usize, len: usize) -> String {
    match len {
        0 => format!("{start},0"),
        1 => format!("{}", start + 1),
        n => format!("{},{n}", start + 1),
    }
}

/// A shortest edit script from `a` to `b`: common prefix and suffix kept, the middle by
/// longest common subsequence.
fn edit_script(a: &[&str], b: &[&str]) -> Vec<Op> {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take(a.len().min(b.len()) - prefix)
        .take_while(|(x, y)| x == y)
        .count();
    let am = a.get(prefix..a.len() - suffix).unwrap_or_default();
    let bm = b.get(prefix..b.len() - suffix).unwrap_or_default();
    let mut ops = vec![Op::Keep; prefix];
    if (am.len() + 1).saturating_mul(bm.len() + 1) > MAX_CELLS {
        ops.extend(std::iter::repeat_n(Op::Del, am.len()));
        ops.extend(std::iter::repeat_n(Op::Add, bm.len()));
    } else {
        ops.extend(lcs_script(am, bm));
    }
    ops.extend(std::iter::repeat_n(Op::Keep, suffix));
    ops
}

fn lcs_script(a: &[&str], b: &[&str]) -> Vec<Op> {
    let w = b.len() + 1;
    // table[i * w + j]: LCS length of a[i..] and b[j..].
    let mut table = vec![0u32; (a.len() + 1) * w];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            let v = if a.get(i) == b.get(j) {
                table.get((i + 1) * w + j + 1).copied().unwrap_or(0) + 1
            } else {
                let down = table.get((i + 1) * w + j).copied().unwrap_or(0);
                let right = table.get(i * w + j + 1).copied().unwrap_or(0);
                down.max(right)
            };
            if let Some(cell) = table.get_mut(i * w + j) {
                *cell = v;
            }
        }
    }
    let mut ops = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a.get(i) == b.get(j) {
            ops.push(Op::Keep);
            i += 1;
            j += 1;
        } else if i < a.len()
            && (j == b.len()
                || table.get((i + 1) * w + j).copied().unwrap_or(0)
                    >= table.get(i * w + j + 1).copied().unwrap_or(0))
        {
            ops.push(Op::Del);
            i += 1;
        } else {
            ops.push(Op::Add);
            j += 1;
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::unified;

    #[test]
    fn a_changed_line_gets_a_hunk_with_context() {
        let before = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let after = "a\nb\nc\nd\nE\nf\ng\nh\n";
        let d = unified("x.env", before, after);
        assert_eq!(
            d,
            "--- a/x.env\n+++ b/x.env\n@@ -2,7 +2,7 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n"
        );
    }

    #[test]
    fn distant_changes_get_two_hunks_and_equal_files_none() {
        let before: String = (0..30).map(|i| format!("{i}\n")).collect();
        let after: String = (0..30)
            .map(|i| match i {
                2 => "two\n".to_owned(),
                25 => "x\n".to_owned(),
                i => format!("{i}\n"),
            })
            .collect();
        let d = unified("f", &before, &after);
        assert_eq!(d.matches("@@ -").count(), 2, "{d}");
        assert!(d.contains("-2\n+two\n") && d.contains("-25\n+x\n"), "{d}");
        assert_eq!(unified("f", &before, &before), "");
    }

    #[test]
    fn a_missing_final_newline_is_marked() {
        let d = unified("f", "k=v", "k=w");
        assert_eq!(
            d,
            "--- a/f\n+++ b/f\n@@ -1 +1 @@\n-k=v\n\\ No newline at end of file\n+k=w\n\\ No newline at end of file\n"
        );
    }
}
