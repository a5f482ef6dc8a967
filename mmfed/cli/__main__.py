from mmfed.cli import app

app()
