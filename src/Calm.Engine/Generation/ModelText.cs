using Calm.Engine.Session;
using Calm.Engine.Templates;
using Calm.Engine.Tokenization;

namespace Calm.Engine.Generation;

/// <summary>
/// The text side of a loaded model: its tokenizer and chat template, attached by <see cref="ModelFactory.Import"/>
/// when the folder has tokenizer.json / tokenizer.model (and a chat_template). A tokenizer or template that failed to
/// load keeps its error here and reports it when text is needed, so weights-only work (benchmarks) still runs.
/// </summary>
public sealed class ModelText
{
    public CalmTokenizer? Tokenizer { get; }
    public ChatTemplate? Template { get; }
    /// <summary>Why the tokenizer could not be loaded (null when it loaded or the folder has none).</summary>
    public CalmException? TokenizerError { get; }
    /// <summary>Why the chat template could not be loaded (null when it loaded or the folder has none).</summary>
    public CalmException? TemplateError { get; }
    public string? Folder { get; }

    public ModelText(CalmTokenizer? tokenizer, ChatTemplate? template, CalmException? tokenizerError = null, CalmException? templateError = null, string? folder = null)
    {
        Tokenizer = tokenizer; Template = template; TokenizerError = tokenizerError; TemplateError = templateError; Folder = folder;
    }

    /// <summary>Loads what a model folder has; never throws for a bad tokenizer/template (see the *Error properties).</summary>
    public static ModelText? TryLoad(string folder, Action<string>? warning = null)
    {
        bool hasTok = File.Exists(Path.Combine(folder, "tokenizer.json")) || File.Exists(Path.Combine(folder, "tokenizer.model"));
        if (!hasTok) return null;
        CalmTokenizer? tok = null; ChatTemplate? tpl = null; CalmException? tokErr = null, tplErr = null;
        try { tok = CalmTokenizer.FromFolder(folder); }
        catch (CalmException e)
        {
            tokErr = e;
            warning?.Invoke($"The model's tokenizer could not be loaded, so it works on token ids only: {e.Message}");
        }
        try { tpl = ChatTemplate.FromModelFolder(folder); }
        catch (CalmException e) when (e.ErrorId == ErrorIds.TemplateMissing) { tplErr = e; }
        catch (CalmException e)
        {
            tplErr = e;
            warning?.Invoke($"The model's chat template could not be loaded: {e.Message}");
        }
        return new ModelText(tok, tpl, tokErr, tplErr, folder);
    }

    /// <summary>The model's tokenizer, or Calm.TokenizerMissing (or the load error) saying why there is none.</summary>
    public static CalmTokenizer RequireTokenizer(LoadedModel model)
    {
        if (model.Text is { Tokenizer: { } t }) return t;
        if (model.Text?.TokenizerError is { } e) throw e;
        throw new CalmException(ErrorIds.TokenizerMissing, CalmErrorKind.NotAvailable,
            model.Path is null
                ? $"Model '{model.Name}' is synthetic and has no tokenizer: it works on token ids only. Pass token ids (Invoke-CalmGenerate -TokenId 1, 2, 3), or import a model folder with a tokenizer.json."
                : $"Model '{model.Name}' ('{model.Path}') has no tokenizer.json or tokenizer.model, so text cannot be encoded. Copy the model's tokenizer files into the folder, or pass token ids.",
            model.Name);
    }

    /// <summary>The model's chat template, or Calm.TemplateMissing (or the load error).</summary>
    public static ChatTemplate RequireTemplate(LoadedModel model)
    {
        if (model.Text is { Template: { } t }) return t;
        if (model.Text?.TemplateError is { } e) throw e;
        throw new CalmException(ErrorIds.TemplateMissing, CalmErrorKind.NotAvailable,
            $"Model '{model.Name}' has no chat template (tokenizer_config.json chat_template or chat_template.jinja). Use plain prompts (Invoke-CalmGenerate without -Chat).",
            model.Name);
    }
}
