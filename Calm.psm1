# Calm root module. The cmdlets live in the binary module bin/Calm.PowerShell.dll (a nested module, see Calm.psd1).
# This script exists for one thing PowerShellStandard.Library cannot do: free every loaded model when the module is
# removed (Remove-Module Calm), so no weights or device memory outlive the module.
$ExecutionContext.SessionState.Module.OnRemove = {
    [Calm.Engine.Session.CalmSession]::Shared.Dispose()
}
