// A line diff for the review before saving and for audit entries. Policies are tens of
// lines, so the classic longest-common-subsequence table (n*m cells) is quick enough and
// far smaller than a diff library (jsdiff ships no single-file ES module).

/** [{op: " " | "-" | "+", text}] turning the lines of `before` into those of `after`. */
export function diffLines(before, after) {
  const a = before === "" ? [] : before.replace(/\n$/, "").split("\n");
  const b = after === "" ? [] : after.replace(/\n$/, "").split("\n");
  // common[i][j]: the length of the longest common subsequence of a[i:] and b[j:]
  const common = Array.from({ length: a.length + 1 }, () => new Array(b.length + 1).fill(0));
  for (let i = a.length - 1; i >= 0; i--) {
    for (let j = b.length - 1; j >= 0; j--) {
      common[i][j] =
        a[i] === b[j] ? common[i + 1][j + 1] + 1 : Math.max(common[i + 1][j], common[i][j + 1]);
    }
  }
  const lines = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (i < a.length && j < b.length && a[i] === b[j]) {
      lines.push({ op: " ", text: a[i++] });
      j++;
    } else if (i < a.length && (j === b.length || common[i + 1][j] >= common[i][j + 1])) {
      lines.push({ op: "-", text: a[i++] }); // removals first, as diff -u prints them
    } else {
      lines.push({ op: "+", text: b[j++] });
    }
  }
  return lines;
}
