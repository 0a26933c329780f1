namespace Calm.Engine.Tokenization;

/// <summary>
/// GPT-2's reversible byte &lt;-&gt; printable-char map used by byte-level BPE: printable Latin-1 bytes map to
/// themselves, the other 68 bytes to U+0100.. in byte order. All 256 chars are in the BMP.
/// </summary>
internal static class ByteLevelMap
{
    /// <summary>[256]: byte -> char.</summary>
    public static readonly char[] ByteToChar;
    /// <summary>[0x144]: char -> byte, -1 where the char is not a byte-level char.</summary>
    public static readonly short[] CharToByte;

    static ByteLevelMap()
    {
        ByteToChar = new char[256];
        CharToByte = new short[0x144];
        Array.Fill(CharToByte, (short)-1);
        int next = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            char c = printable ? (char)b : (char)(0x100 + next++);
            ByteToChar[b] = c;
            CharToByte[c] = (short)b;
        }
    }

    /// <summary>The byte-level string of a text's UTF-8 bytes.</summary>
    public static string Encode(ReadOnlySpan<char> text)
    {
        int n = System.Text.Encoding.UTF8.GetByteCount(text);
        Span<byte> bytes = n <= 1024 ? stackalloc byte[n] : new byte[n];
        System.Text.Encoding.UTF8.GetBytes(text, bytes);
        return string.Create(n, bytes.ToArray(), static (dst, src) =>
        {
            for (int i = 0; i < src.Length; i++) dst[i] = ByteToChar[src[i]];
        });
    }

    /// <summary>Appends the bytes a byte-level token stands for; false (nothing appended) if some char is not a byte char.</summary>
    public static bool TryDecode(string token, List<byte> dst)
    {
        foreach (char c in token)
            if (c >= CharToByte.Length || CharToByte[c] < 0) return false;
        foreach (char c in token) dst.Add((byte)CharToByte[c]);
        return true;
    }
}
