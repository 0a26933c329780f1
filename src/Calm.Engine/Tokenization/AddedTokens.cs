namespace Calm.Engine.Tokenization;

/// <summary>An entry of tokenizer.json "added_tokens".</summary>
internal sealed record AddedToken(int Id, string Content, bool Special, bool Normalized, bool Lstrip, bool Rstrip, bool SingleWord);

/// <summary>
/// Finds added tokens in text the way Hugging Face's AddedVocabulary does: leftmost-longest match; lstrip/rstrip
/// swallow the whitespace before/after the token; single_word requires no word char on either side.
/// </summary>
internal sealed class AddedTokenMatcher
{
    /// <summary>First char -> candidates, longest first.</summary>
    readonly Dictionary<char, (string Text, AddedToken Token)[]> _byFirst;

    public bool IsEmpty => _byFirst.Count == 0;

    /// <param name="normalize">For tokens matched on normalized text: the normalizer applied to their content.</param>
    public AddedTokenMatcher(IEnumerable<AddedToken> tokens, Func<string, string>? normalize)
    {
        _byFirst = tokens
            .Select(t => (Text: normalize != null ? normalize(t.Content) : t.Content, Token: t))
            .Where(x => x.Text.Length > 0)
            .GroupBy(x => x.Text[0])
            .ToDictionary(g => g.Key, g => g.OrderByDescending(x => x.Text.Length).ToArray());
    }

    /// <summary>Splits text into (start, end, token or null) spans covering it in order.</summary>
    public void Split(string text, List<(int Start, int End, AddedToken? Token)> result)
    {
        int pieceStart = 0, i = 0;
        while (i < text.Length)
        {
            if (!_byFirst.TryGetValue(text[i], out var cands)) { i++; continue; }
            AddedToken? hit = null;
            int hitLen = 0;
            foreach (var (t, tok) in cands)
            {
                if (i + t.Length > text.Length || string.CompareOrdinal(text, i, t, 0, t.Length) != 0) continue;
                if (tok.SingleWord && ((i > 0 && IsWordChar(text[i - 1])) || (i + t.Length < text.Length && IsWordChar(text[i + t.Length])))) continue;
                hit = tok; hitLen = t.Length;
                break;
            }
            if (hit == null) { i++; continue; }
            int s = i, e = i + hitLen;
            if (hit.Lstrip) while (s > pieceStart && char.IsWhiteSpace(text[s - 1])) s--;
            if (hit.Rstrip) while (e < text.Length && char.IsWhiteSpace(text[e])) e++;
            if (s > pieceStart) result.Add((pieceStart, s, null));
            result.Add((s, e, hit));
            pieceStart = i = e;
        }
        if (pieceStart < text.Length) result.Add((pieceStart, text.Length, null));
    }

    static bool IsWordChar(char c) => char.IsLetterOrDigit(c) || c == '_';
}
