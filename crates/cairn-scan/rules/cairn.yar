// Cairn's own rule set. Written for Cairn; each rule's `severity` says
// what a hit makes of a recovery point: "compromised" (do not recover to
// it) or "warning" (look before trusting it). A rule tagged `autostart`
// counts only for files in places that run by themselves (cron, systemd,
// boot scripts, shell profiles, Startup folders) or in temp folders: the
// same lines in a project's CI file are ordinary.
//
// Every regex repeats a bounded number of times ({0,16}, not *): with
// strings of bounded length, a file that changed in place is rescanned
// only around its changes (see src/windows.rs).

rule Cairn_EICAR_Test_File
{
    meta:
        description = "EICAR anti-malware test file"
        severity = "compromised"
    strings:
        $eicar = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
    condition:
        $eicar
}

rule Cairn_Ransom_Note
{
    meta:
        description = "ransom note wording with a way to pay or reach the attacker"
        severity = "compromised"
    strings:
        $claim1 = "your files have been encrypted" nocase ascii wide
        $claim2 = "all your files are encrypted" nocase ascii wide
        $claim3 = "your files are encrypted" nocase ascii wide
        $claim4 = "to decrypt your files" nocase ascii wide
        $claim5 = "your network has been penetrated" nocase ascii wide
        $claim6 = "we have downloaded" nocase ascii wide
        $pay1 = "bitcoin" nocase ascii wide
        $pay2 = "monero" nocase ascii wide
        $pay3 = "tor browser" nocase ascii wide
        // Any address that looks like a hidden service, even one cut
        // short or mistyped: beside the claim, it is a way to reach them.
        $pay4 = /[a-z2-7]{16,56}\.onion/ nocase ascii
        $pay5 = "decryptor" nocase ascii wide
        $pay6 = /[^a-z]btc[^a-z]/ nocase ascii
        // A bech32 Bitcoin address (a base58 one has no fixed part to
        // look for cheaply: slow; its notes say bitcoin or BTC anyway).
        $pay7 = /bc1[02-9ac-hj-np-z]{25,87}/ ascii
    condition:
        filesize < 1MB and any of ($claim*) and any of ($pay*)
}

rule Cairn_Onion_Address
{
    meta:
        description = "Tor hidden-service address in a small file"
        severity = "warning"
    strings:
        $onion = /[a-z2-7]{56}\.onion/ ascii
    condition:
        filesize < 256KB and $onion
}

rule Cairn_WannaCry_Encrypted_File
{
    meta:
        description = "file encrypted by WannaCry (its WANACRY! header)"
        severity = "compromised"
    strings:
        $magic = "WANACRY!"
    condition:
        $magic at 0
}

rule Cairn_PHP_Web_Shell
{
    meta:
        description = "PHP that runs code or commands taken from the request"
        severity = "compromised"
    strings:
        $php = "<?php" nocase
        $run = /(eval|assert|system|passthru|shell_exec|exec|popen|proc_open)\s{0,16}\(\s{0,16}(base64_decode\s{0,16}\(\s{0,16}|gzinflate\s{0,16}\(\s{0,16}|str_rot13\s{0,16}\(\s{0,16}){0,4}\$_(POST|GET|REQUEST|COOKIE|SERVER)/ nocase
    condition:
        filesize < 1MB and $php and $run
}

rule Cairn_ASP_Web_Shell
{
    meta:
        description = "ASP/ASPX page that evaluates the request"
        severity = "compromised"
    strings:
        $a = /<%@?\s{0,16}Page\s{1,16}Language\s{0,16}=\s{0,16}"?(Jscript|C#)"?/ nocase
        $b = /eval\s{0,16}\(\s{0,16}Request(\.Item)?\s{0,16}\[/ nocase
        $c = "Process.Start" nocase
        $d = /Request\.(Form|QueryString)\s{0,16}\[/ nocase
    condition:
        filesize < 1MB and $a and ($b or ($c and $d))
}

rule Cairn_Reverse_Shell
{
    meta:
        description = "script that opens a shell to a remote host"
        severity = "compromised"
    strings:
        $tcp = /\/dev\/tcp\/[0-9a-zA-Z.\-]{1,253}\/[0-9]{1,5}/
        $nc = /\b(nc|ncat|netcat)\s{1,16}(-[a-z]{0,8}e\s{1,16}\/bin\/(ba)?sh|.{0,200}-e\s{1,16}\/bin\/(ba)?sh)/
        $py = /socket\.socket\(.{0,200}(subprocess|pty\.spawn|os\.dup2)/
        $mkfifo = /mkfifo\s{1,16}\S{1,255}.{0,80}\bnc\b/
    condition:
        filesize < 1MB and any of them
}

rule Cairn_Download_And_Run : autostart
{
    meta:
        description = "script that downloads code and pipes it to a shell"
        severity = "warning"
    strings:
        $pipe = /(curl|wget)\s[^\n|;]{1,300}\|\s{0,16}(ba|z|da)?sh\b/
        $b64 = /base64\s{1,16}(-d|--decode)[^\n]{0,40}\|\s{0,16}(ba)?sh\b/
    condition:
        filesize < 1MB and any of them
}

rule Cairn_Shadow_Copy_Deletion
{
    meta:
        description = "commands ransomware uses to delete Windows shadow copies and backups"
        severity = "compromised"
    strings:
        $v1 = "vssadmin delete shadows" nocase ascii wide
        $v2 = "vssadmin.exe delete shadows" nocase ascii wide
        $w1 = /wmic(\.exe)?\s{1,16}shadowcopy\s{1,16}delete/ nocase ascii wide
        $b1 = /bcdedit(\.exe)?\s{1,16}\/set\s{1,16}\{default\}\s{1,16}recoveryenabled\s{1,16}no/ nocase ascii wide
        $b2 = /wbadmin(\.exe)?\s{1,16}delete\s{1,16}catalog/ nocase ascii wide
    condition:
        any of them
}
