"""The gateway's pages: plain HTML, CSS and JavaScript, served by `gateway.api.routes.pages`.

No build step and nothing loaded from elsewhere: edit a file, reload the page. The folder is
a package only so that the files are installed with the gateway.
"""
