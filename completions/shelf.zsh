#compdef shelf

_shelf_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _SHELF_COMPLETE=complete_zsh shelf)
}

compdef _shelf_completion shelf
